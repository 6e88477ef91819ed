-- Roles and databases of the three services, one database per service.
--
-- Run by psql as a superuser, and idempotent: `deploy/local/stack.py` runs it on every start of
-- its PostgreSQL server, docker-compose mounts it into /docker-entrypoint-initdb.d, and the
-- test fixtures do the same with testcontainers.
--
-- Development credentials: each role's password is its own name. Production deployments create
-- the roles with real secrets and pass them through API_DATABASE_URL, INVENTORY_DATABASE_URL and
-- FULFILMENT_DATABASE_URL.
--
-- Isolation: CONNECT (and TEMPORARY) on each service database is revoked from PUBLIC and granted
-- to its own role only, so one service's role is refused by another service's database.

\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', r)
FROM unnest(ARRAY['api', 'inventory', 'fulfilment']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r)
\gexec

SET password_encryption = 'scram-sha-256';

SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', r, r)
FROM unnest(ARRAY['api', 'inventory', 'fulfilment']) AS r
\gexec

SELECT format('CREATE DATABASE %I OWNER %I', r, r)
FROM unnest(ARRAY['api', 'inventory', 'fulfilment']) AS r
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = r)
\gexec

SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', r)
FROM unnest(ARRAY['api', 'inventory', 'fulfilment']) AS r
\gexec

SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', r, r)
FROM unnest(ARRAY['api', 'inventory', 'fulfilment']) AS r
\gexec
