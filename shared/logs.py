"""JSON-lines logging with request and transaction ids for correlation."""

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
transaction_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "transaction_id", default=None
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, worker: str | None = None) -> None:
        super().__init__()
        self._service = service
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            **({"worker": self._worker} if self._worker is not None else {}),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (rid := request_id_var.get()) is not None:
            entry["requestId"] = rid
        if (tid := transaction_id_var.get()) is not None:
            entry["transactionId"] = tid
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
            entry["trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(service: str, level: str, worker: str | None = None) -> None:
    """JSON lines on stdout; `worker` (the index of one of several worker processes of the
    service) goes on every line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class FailureReport:
    """What a step repeated on its own (a timer, each scrape) says of its failures: the first
    one of a spell, with the error's type only (messages may carry values not meant for the
    logs) and when the step is tried next, and once again when it works."""

    def __init__(self, logger: logging.Logger, name: str, next_try: str) -> None:
        self._log, self._name, self._next_try = logger, name, next_try
        self.failing = False

    def worked(self) -> None:
        if self.failing:
            self._log.info("%s works again", self._name)
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            self._log.warning("%s failed (%s); %s", self._name, type(exc).__name__, self._next_try)
        self.failing = True
