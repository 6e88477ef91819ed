"""DDL that the services' migrations ran, frozen with them.

Never edit a constant here: a database already migrated would not see the edit, and a new one
would differ from it. A schema change is a new migration in each service it concerns, and its
SQLModel table (`adapters/tables.py`) changes with it; the tests compare the two
(`shared.db.schema_drift`).
"""

# The outbox of every service, as revision 0001 of each created it.
OUTBOX_0001 = """
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    relay_after timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('outbox', ''); RETURN NULL; END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

# Outbox rows the broker can never take (larger than it accepts), moved out of the outbox by
# the relay so that nothing behind them waits; kept whole, with the reason, for an operator.
OUTBOX_DEAD_LETTERS_1 = """
CREATE TABLE outbox_dead_letters (
    id         bigint      PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    dead_at    timestamptz NOT NULL DEFAULT now(),
    reason     text        NOT NULL
);
INSERT INTO outbox_dead_letters (id, topic, key, payload, headers, created_at, reason)
    SELECT id, topic, key, payload, headers, created_at, 'MessageSizeTooLargeError'
    FROM outbox WHERE relay_after = 'infinity';
DELETE FROM outbox WHERE relay_after = 'infinity';
"""
OUTBOX_DEAD_LETTERS_1_UNDO = """
INSERT INTO outbox (id, topic, key, payload, headers, created_at, relay_after)
    SELECT id, topic, key, payload, headers, created_at, 'infinity' FROM outbox_dead_letters;
DROP TABLE outbox_dead_letters;
"""

# The outbox keeps only its primary key: since the relay deletes the rows the broker
# acknowledged (rather than marking them published), every row in the table is unpublished, so
# outbox_unpublished held the same entries as the primary key, one more index entry to write
# for every event, and outbox_published_at held none.
OUTBOX_PRIMARY_KEY_ONLY = """
DROP INDEX CONCURRENTLY IF EXISTS outbox_unpublished;
DROP INDEX CONCURRENTLY IF EXISTS outbox_published_at;
"""
OUTBOX_PRIMARY_KEY_ONLY_UNDO = """
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_unpublished ON outbox (id)
    WHERE published_at IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published_at ON outbox (published_at)
    WHERE published_at IS NOT NULL;
"""
