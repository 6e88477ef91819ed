"""`db migrate` and `kafka bootstrap`: the set-up steps the start command runs."""

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

    kafka = sub.add_parser("kafka", help="Kafka topics").add_subparsers(
        dest="action", required=True
    )
    boot = kafka.add_parser("bootstrap", help="create every topic (idempotent)")
    boot.set_defaults(func=cmd_bootstrap)


def _migrations_dir(service: str) -> Path:
    return Path(str(resources.files(f"services.{service}"))) / "adapters" / "migrations"


def cmd_migrate(args: argparse.Namespace) -> None:
    from pydantic_settings import BaseSettings

    from shared.db import migrate
    from shared.settings import ApiSettings, FulfilmentSettings, InventorySettings

    # Only the database URLs: a migration needs none of the services' secrets.
    settings: dict[str, type[BaseSettings]] = {
        "api": ApiSettings,
        "inventory": InventorySettings,
        "fulfilment": FulfilmentSettings,
    }
    urls = {
        service: os.environ.get(f"{service.upper()}_DATABASE_URL", "").strip()
        or str(cls.model_fields["database_url"].default)
        for service, cls in settings.items()
    }
    chosen = SERVICES if args.service == "all" else (args.service,)
    for service in chosen:
        progress(f"migrating the {service} database")
        try:
            migrate(_migrations_dir(service), urls[service])
        except OSError as exc:
            fail(f"Cannot reach the {service} database ({exc}). Is PostgreSQL up (`make up`)?")
    emit({"migrated": list(chosen)})


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
