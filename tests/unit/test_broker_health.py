"""After a failed publish the api refuses orders until a probe of the broker succeeds; an
error the probe did not expect is a failed probe, not the end of probing (else the api would
answer 503 until restarted)."""

from typing import Any, cast

from aiokafka import AIOKafkaProducer

from services.api.adapters.kafka import BrokerHealth
from tests.helpers import wait_until


class Client:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def fetch_all_metadata(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


class Producer:
    def __init__(self, client: Client) -> None:
        self.client = client


async def test_an_unexpected_probe_error_does_not_stop_the_probe() -> None:
    client = Client([RuntimeError("a client in a state nobody foresaw"), OSError("refused")])
    health = BrokerHealth(cast(AIOKafkaProducer, cast(Any, Producer(client))))
    health.failed()
    assert not health.accepting
    try:
        await wait_until(lambda: health.accepting, timeout=10, message="accepting again")
        assert client.calls == 3
    finally:
        await health.stop()
