"""`db migrate`, `db check` and `kafka bootstrap`: the set-up steps the start command runs,
and the check that each database has exactly the tables its service declares."""

import argparse
import asyncio
import os
from importlib import resources
from pathlib import Path

from shared import topics
from shared.cli.common import emit, fail, progress

SERVICES = ("api", "inventory", "fulfilment")


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    migrate = db.add_parser("migrate", help="apply each service's migrations")
    migrate.add_argument("--service", choices=(*SERVICES, "all"), default="all")
    migrate.set_defaults(func=cmd_migrate)
    check = db.add_parser(
        "check",
        help="compare each migrated database with its service's declared tables (as `alembic "
        "check` does); exit 1 listing the differences",
    )
    check.add_argument("--service", choices=(*SERVICES, "all"), default="all")
    check.set_defaults(func=cmd_check)

    kafka = sub.add_parser("kafka", help="Kafka topics").add_subparsers(
        dest="action", required=True
    )
    boot = kafka.add_parser("bootstrap", help="create every topic (idempotent)")
    boot.set_defaults(func=cmd_bootstrap)


def _migrations_dir(service: str) -> Path:
    return Path(str(resources.files(f"services.{service}"))) / "adapters" / "migrations"


def _database_urls() -> dict[str, str]:
    """Each service's database URL from the environment (or its default), and only that: a
    migration or a check needs none of the services' secrets."""
    from pydantic_settings import BaseSettings

    from shared.settings import ApiSettings, FulfilmentSettings, InventorySettings

    settings: dict[str, type[BaseSettings]] = {
        "api": ApiSettings,
        "inventory": InventorySettings,
        "fulfilment": FulfilmentSettings,
    }
    return {
        service: os.environ.get(f"{service.upper()}_DATABASE_URL", "").strip()
        or str(cls.model_fields["database_url"].default)
        for service, cls in settings.items()
    }


def cmd_migrate(args: argparse.Namespace) -> None:
    from shared.db import migrate

    urls = _database_urls()
    chosen = SERVICES if args.service == "all" else (args.service,)
    for service in chosen:
        progress(f"migrating the {service} database")
        try:
            migrate(_migrations_dir(service), urls[service])
        except OSError as exc:
            fail(f"Cannot reach the {service} database ({exc}). Is PostgreSQL up (`make up`)?")
    emit({"migrated": list(chosen)})


def cmd_check(args: argparse.Namespace) -> None:
    from shared.db import schema_drift
    from shared.tables import service_metadata

    urls = _database_urls()
    chosen = SERVICES if args.service == "all" else (args.service,)
    drift: dict[str, list[str]] = {}
    for service in chosen:
        progress(f"comparing the {service} database with its tables")
        try:
            drift[service] = asyncio.run(schema_drift(urls[service], service_metadata(service)))
        except OSError as exc:
            fail(f"Cannot reach the {service} database ({exc}). Is PostgreSQL up (`make up`)?")
    differing = {service: diffs for service, diffs in drift.items() if diffs}
    if differing:
        lines = [f"{service}: {diff}" for service, diffs in differing.items() for diff in diffs]
        fail(
            "The databases differ from the declared tables (adapters/tables.py): a table "
            "changed without its migration, or a migration without its table change, or a "
            "database not migrated (`instant-orders db migrate`).\n  " + "\n  ".join(lines)
        )
    emit({"checked": list(chosen), "differences": 0})


def cmd_bootstrap(_: argparse.Namespace) -> None:
    emit(asyncio.run(bootstrap_topics(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))))


async def bootstrap_topics(bootstrap: str) -> dict[str, list[str]]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
    except KafkaConnectionError:
        fail(f"Cannot reach Kafka at {bootstrap}. Is the broker up (`make up`)?")
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics.ALL if t.name not in existing]
        if missing:
            progress(f"creating {len(missing)} topics: {', '.join(t.name for t in missing)}")
            await admin.create_topics(
                [
                    NewTopic(
                        t.name,
                        num_partitions=t.partitions,
                        replication_factor=1,
                        topic_configs=t.config,
                    )
                    for t in missing
                ]
            )
        return {
            "created": [t.name for t in missing],
            "present": sorted(existing & {t.name for t in topics.ALL}),
        }
    finally:
        await admin.close()
