"""Benchmark of the in-stock instant path on a running stack (`make up` first).

Open loop: requests are sent on a fixed schedule at each rate, and a request's latency counts
from the moment it was *scheduled*, so a slow server cannot hide queueing (no coordinated
omission). All orders come from ONE account unless --accounts says otherwise: the case where a
naive design serialises on the balance row.

    .venv/bin/python benchmarks/instant_orders.py --rates 100,300,600,1000 --seconds 20

In one run it measures: the idle stack's CPU; one order at a time (p50/p99); each rate's
latency percentiles, COMPLETED count and CPU per order of every process of the stack (api,
inventory, fulfilment, Kafka, PostgreSQL, and the load generator itself), from /proc CPU time
over the steady run, how many orders each stage took per cycle (the api's accepting and
recording group commits, inventory's decision transactions), and how much WAL PostgreSQL wrote
per order (records and kB, the whole server: what an order's rows and index entries cost to
write); and, with --overload, a burst offered above the ceiling (how many got a fast 503, and
the longest any request waited). --soak-minutes runs one rate for that long and prints per
minute the p99, throughput and resident memory of every process.

Prints Markdown tables, and with --record appends them to docs/benchmarks.md with the command.
The load generator is a minimal keep-alive HTTP/1.1 client (httpx's pool cost more CPU per
request than the api itself, on the same two cores); "answered/s" is answers over the time
the whole rate took, so a server that falls behind shows it.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.cli.common import admin_url, local_secret, run_dir, service_url  # noqa: E402


@dataclass
class Result:
    rate: int
    seconds: float
    sent: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    per_cycle: dict[str, float] = field(default_factory=dict)
    wal_per_order: tuple[float, float] | None = None  # (records, kB)

    def pct(self, p: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    @property
    def answered_per_s(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def row(self) -> str:
        completed = self.statuses.get("COMPLETED", 0)
        other = {k: v for k, v in self.statuses.items() if k != "COMPLETED"}
        worst = max(self.latencies, default=float("nan")) * 1000
        others = json.dumps(other) if other else "-"
        per_order = " | ".join(f"{self.cpu_ms.get(name, 0):.2f}" for name in CPU_COLUMNS)
        per_cycle = " | ".join(
            f"{self.per_cycle[what]:.1f}" if what in self.per_cycle else "-" for *_, what in CYCLES
        )
        wal = "{:.1f} | {:.2f}".format(*self.wal_per_order) if self.wal_per_order else "- | -"
        return (
            f"| {self.rate} | {self.answered_per_s:.0f} | {self.pct(0.50):.1f} | "
            f"{self.pct(0.95):.1f} | {self.pct(0.99):.1f} | {worst:.1f} | {completed} | "
            f"{others} | {per_order} | {per_cycle} | {wal} |"
        )


# --- CPU time and memory of the stack's processes, from /proc ---------------------------------

STACK_PROCESSES = ("api", "inventory", "fulfilment", "kafka", "postgres")
CPU_COLUMNS = (*STACK_PROCESSES, "stack", "generator")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _tree(root: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def stack_pids() -> dict[str, list[int]]:
    """Each stack process by name (.run/pids/NAME.pid, NAME-2.pid for a second instance)."""
    pids: dict[str, list[int]] = {}
    folder = run_dir() / "pids"
    for path in sorted(folder.glob("*.pid")) if folder.is_dir() else []:
        name = path.stem.split("-")[0]
        if name in STACK_PROCESSES:
            try:
                pids.setdefault(name, []).append(int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def _per_process(value_of: Callable[[list[str], bool], int]) -> dict[str, int]:
    """`value_of(stat fields, is_root)` summed over each stack process and all its
    descendants (PostgreSQL's backends, the JVM's threads)."""
    tree = _children()
    totals: dict[str, int] = {}
    for name, roots in stack_pids().items():
        totals[name] = sum(
            value_of(fields, pid == root)
            for root in roots
            for pid in _tree(root, tree)
            if (fields := _stat(pid)) is not None
        )
    return totals


def _cpu_ticks(fields: list[str], is_root: bool) -> int:
    """A process's CPU time (every thread it ran), and for the root its reaped children's."""
    used = int(fields[11]) + int(fields[12])  # utime, stime
    if is_root:
        used += int(fields[13]) + int(fields[14])  # cutime, cstime
    return used


def tree_cpu_seconds(root: int) -> float:
    """CPU time so far of `root` and all its descendants."""
    tree = _children()
    return (
        sum(
            _cpu_ticks(fields, pid == root)
            for pid in _tree(root, tree)
            if (fields := _stat(pid)) is not None
        )
        / CLOCK_TICKS
    )


def cpu_seconds(generator_pids: Sequence[int] = ()) -> dict[str, float]:
    """CPU time so far of each stack process with its descendants, and of the generator: this
    process and the Go load generator it runs (`generator_pids`)."""
    seconds = {name: t / CLOCK_TICKS for name, t in _per_process(_cpu_ticks).items()}
    me = os.times()
    seconds["generator"] = me.user + me.system
    for pid in generator_pids:
        if (fields := _stat(pid)) is not None:
            seconds["generator"] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def rss_mib() -> dict[str, float]:
    resident = _per_process(lambda fields, _: int(fields[21]) * PAGE_BYTES)
    return {name: size / 2**20 for name, size in resident.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {name: after[name] - before.get(name, after[name]) for name in after}
    delta["stack"] = sum(delta.get(name, 0.0) for name in STACK_PROCESSES)
    return delta


async def admin(client: httpx.AsyncClient, method: str, url: str, **kw: object) -> dict[str, Any]:
    response = await client.request(method, url, **kw)  # type: ignore[arg-type]
    if response.status_code >= 400:
        raise SystemExit(f"set-up failed: {method} {url} → {response.status_code} {response.text}")
    data: dict[str, Any] = response.json()["data"]
    return data


async def setup(codes: int, accounts: int) -> tuple[str, list[dict[str, str]]]:
    token = local_secret("ADMIN_TOKEN")
    if not token:
        raise SystemExit("No ADMIN_TOKEN: run `make up` first, or export the stack's settings.")
    headers = {"Authorization": f"Bearer {token}"}
    sku = f"BENCH-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        inv, api = admin_url("inventory"), admin_url("api")
        version = (
            await admin(
                client,
                "PUT",
                f"{inv}/admin/products/{sku}",
                json={"name": "Benchmark card", "currency": "USD", "price": "1.00"},
            )
        )["version"]
        remaining = codes
        while remaining > 0:
            batch = min(remaining, 5000)
            await admin(
                client, "POST", f"{inv}/admin/products/{sku}/stock", json={"generate": batch}
            )
            remaining -= batch
            print(f"stocked {codes - remaining}/{codes} codes", file=sys.stderr)
        deadline = time.monotonic() + 15
        while True:
            seen = await client.get(f"{api}/admin/products/{sku}")
            if seen.status_code == 200 and seen.json()["data"]["version"] >= version:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the api did not see the benchmark product within 15 s")
            await asyncio.sleep(0.1)
        creds = []
        for _ in range(accounts):
            data = await admin(
                client,
                "POST",
                f"{api}/admin/accounts",
                json={
                    "name": "bench",
                    "balances": [{"currency": "USD", "amount": "10000000.00"}],
                    "rateLimitPerSecond": "100000",
                },
            )
            creds.append(
                {"x-api-key": data["apiKey"], "Authorization": f"Bearer {data['accessToken']}"}
            )
    return sku, creds


class Connection:
    """One keep-alive HTTP/1.1 connection: a minimal client, so that the load generator, on
    the same two cores as the stack, costs far less CPU than the server it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connects, unless connected already."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        await self.open()
        assert self.reader is not None
        assert self.writer is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass(frozen=True)
class Answer:
    """One request of a run, its times in seconds from the run's start: when it was due, when
    the generator got round to it (later if its loop was behind), when it wrote it (later
    still if every connection was busy, or while one was dialled), and when the answer was
    read."""

    scheduled: float
    woke: float
    written: float
    answered: float
    answer: str  # data.status of a 200, "HTTP <code>", or the error's name


GENERATORS = ("go", "python")
START_LEAD_S = 0.3  # from choosing a rate's start to its first request
GENERATOR_NAMES = {"go": "benchmarks/loadgen", "python": "this script's event loop"}
LOADGEN = REPO / "benchmarks" / "loadgen"


def loadgen_binary() -> Path:
    """benchmarks/loadgen built (again when its source is newer) into the stack's .run."""
    binary = run_dir() / "loadgen"
    sources = [*LOADGEN.glob("*.go"), LOADGEN / "go.mod"]
    if not binary.exists() or binary.stat().st_mtime < max(f.stat().st_mtime for f in sources):
        print("building the Go load generator (benchmarks/loadgen)", file=sys.stderr)
        binary.parent.mkdir(parents=True, exist_ok=True)
        # Go's build cache is kept in .run too unless one is set: CI may give no HOME.
        env = {"GOCACHE": str(run_dir() / "go-cache"), **os.environ}
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=LOADGEN, env=env, check=True)
    return binary


@dataclass(frozen=True)
class Schedule:
    """What a generator sends: `total` requests at `rate` a second, the first due at `start`
    (a `time.perf_counter()` of this process), on at most `connections` at once, each with
    the next set of `creds` in turn."""

    url: httpx.URL
    body: bytes
    creds: list[dict[str, str]]
    rate: int
    total: int
    connections: int
    start: float


async def python_answers(run: Schedule) -> list[Answer]:
    """The run from this process's own event loop (`--generator python`)."""
    url, body, creds, rate, start = run.url, run.body, run.creds, run.rate, run.start
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(run.connections):
        pool.put_nowait(Connection(url.host, url.port or 80))
    answers: list[Answer] = []

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        woke = time.perf_counter()
        conn = await pool.get()
        written: float | None = None
        try:
            await conn.open()
            written = time.perf_counter()  # after the connect: that wait is not the server's
            status, payload = await conn.post("/v2/orders/instant", body, creds[i % len(creds)])
            key = json.loads(payload)["data"]["status"] if status == 200 else f"HTTP {status}"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            conn = Connection(url.host, url.port or 80)
            key = type(exc).__name__
        finally:
            pool.put_nowait(conn)
        answered = time.perf_counter()
        written = answered if written is None else written  # it never was
        answers.append(Answer(i / rate, woke - start, written - start, answered - start, key))

    await asyncio.gather(*(one(i) for i in range(run.total)))
    while not pool.empty():
        pool.get_nowait().close()
    return answers


async def go_answers(run: Schedule, binary: Path, started: "Callable[[int], None]") -> list[Answer]:
    """The run from benchmarks/loadgen (`binary`, built before `run.start` was chosen),
    started so that its first request is due at `run.start` (the two processes' clocks agree
    through the wall clock); `started` is told its pid."""
    settings = {
        "addr": f"{run.url.host}:{run.url.port or 80}",
        "path": "/v2/orders/instant",
        "rate": run.rate,
        "count": run.total,
        "connections": run.connections,
        "body": run.body.decode(),
        "headers": run.creds,
        "start_unix_ns": time.time_ns() + int((run.start - time.perf_counter()) * 1e9),
    }
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        # It needs nothing of this environment (which, under `make bench`, holds the stack's
        # secrets); GOMAXPROCS, when set, is passed on.
        env={k: v for k, v in os.environ.items() if k == "GOMAXPROCS"},
    )
    started(proc.pid)
    try:
        out, _ = await proc.communicate(json.dumps(settings).encode())
    finally:
        if proc.returncode is None:  # the benchmark was stopped: so is its generator
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the Go load generator failed (exit {proc.returncode})")
    answers = []
    for line in out.decode().splitlines():
        index, woke, written, answered, key = line.split("\t", 4)
        at = [int(us) / 1e6 for us in (woke, written, answered)]
        answers.append(Answer(int(index) / run.rate, at[0], at[1], at[2], key))
    return answers


async def run_rate(
    sku: str,
    creds: list[dict[str, str]],
    rate: int,
    seconds: float,
    connections: int,
    on_answer: "Callable[[Answer], None] | None" = None,
    generator: str = "go",
) -> Result:
    result = Result(rate, seconds)
    total = int(rate * seconds)
    binary = loadgen_binary() if generator == "go" else None  # a build takes seconds
    start = time.perf_counter() + START_LEAD_S
    schedule = Schedule(
        httpx.URL(service_url("api")),
        json.dumps({"sku": sku}).encode(),
        creds,
        rate,
        total,
        connections,
        start,
    )
    # Only the steady middle of the run counts towards CPU per order: not the start-up, nor
    # the tail while the last answers come back.
    window = (start + min(2.0, seconds / 5), start + seconds - min(1.0, seconds / 10))
    marks: list[dict[str, float]] = []
    cycles: list[dict[int, tuple[float, float]]] = []
    wal: list[tuple[int, int]] = []
    generator_pids: list[int] = []

    async def count_cycles() -> None:
        # A service that does not answer its /metrics: no batch sizes, but the run goes on.
        with contextlib.suppress(httpx.HTTPError):
            cycles.append(await histogram_totals(CYCLES))

    async def count_wal() -> None:
        # Nor without PostgreSQL's statistics: no WAL per order.
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            wal.append(await wal_written())

    async def sample_cpu() -> None:
        # The batch sizes are scraped just before the window opens and just after it closes,
        # so that rendering /metrics is not in the CPU counted per order; PostgreSQL's WAL
        # counters are read between those and the window's edges.
        opens, closes = window
        await asyncio.sleep(max(0.0, opens - time.perf_counter()))
        await count_cycles()
        await count_wal()
        marks.append(cpu_seconds(generator_pids))
        await asyncio.sleep(max(0.0, closes - time.perf_counter()))
        marks.append(cpu_seconds(generator_pids))
        await count_wal()
        await count_cycles()

    sampler = asyncio.create_task(sample_cpu())
    if binary is not None:
        answers = await go_answers(schedule, binary, generator_pids.append)
    else:
        answers = await python_answers(schedule)
    # From the first request's due time to the last answer: the lead before it is not the run's.
    result.elapsed = max((a.answered for a in answers), default=0.0)
    result.sent = total
    in_window = 0
    for a in answers:
        in_window += window[0] <= start + a.answered < window[1]
        result.latencies.append(a.answered - a.scheduled)
        result.statuses[a.answer] = result.statuses.get(a.answer, 0) + 1
        if on_answer is not None:
            on_answer(a)
    if seconds >= 3:
        await sampler
        orders = max(1, in_window)  # answers within the window: a server behind is not flattered
        used = cpu_delta(marks[0], marks[1])
        result.cpu_ms = {name: used[name] * 1000 / orders for name in used}
        if len(cycles) == 2:
            for i, (*_, what) in enumerate(CYCLES):
                served, flushes = (cycles[1][i][n] - cycles[0][i][n] for n in (0, 1))
                if flushes:
                    result.per_cycle[what] = served / flushes
        if len(wal) == 2:
            records, written = (wal[1][n] - wal[0][n] for n in (0, 1))
            result.wal_per_order = (records / orders, written / 1024 / orders)
    else:
        sampler.cancel()
    return result


async def bulk_during(sku: str, creds: dict[str, str], units: int, delay_s: float) -> str:
    """Places one bulk order of `units` codes of `sku`, `delay_s` into a rate's run, and waits
    until every unit is delivered: how long its acceptance took, and its delivery."""
    await asyncio.sleep(delay_s)
    token = local_secret("ADMIN_TOKEN")
    async with httpx.AsyncClient(timeout=120) as client:
        began = time.perf_counter()
        response = await client.post(
            f"{service_url('api')}/v2/orders",
            json={"products": [{"sku": sku, "quantity": units}]},
            headers=creds,
        )
        accepted_ms = (time.perf_counter() - began) * 1000
        if response.status_code != 200:
            return f"bulk order refused: HTTP {response.status_code} {response.text[:200]}"
        tx = response.json()["data"]["transactionId"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            shown = await client.get(
                f"{admin_url('api')}/admin/orders/{tx}",
                headers={"Authorization": f"Bearer {token}"},
            )
            counts = shown.json()["data"]["lines"][0]["units"]
            if counts["PROCESSING"] == 0:
                break
            await asyncio.sleep(0.5)
        delivered_s = time.perf_counter() - began
    return (
        f"bulk order of {units} units accepted in {accepted_ms:.0f} ms, all decided after "
        f"{delivered_s:.1f} s ({json.dumps(counts)})"
    )


async def one_at_a_time(sku: str, creds: dict[str, str], count: int) -> Result:
    """Each order sent when the previous one was answered: the latency floor."""
    result = Result(0, 0)
    url = httpx.URL(service_url("api"))
    conn = Connection(url.host, url.port or 80)
    body = json.dumps({"sku": sku}).encode()
    began = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter()
        status, payload = await conn.post("/v2/orders/instant", body, creds)
        result.latencies.append(time.perf_counter() - sent)
        key = json.loads(payload)["data"]["status"] if status == 200 else f"HTTP {status}"
        result.statuses[key] = result.statuses.get(key, 0) + 1
        await asyncio.sleep(0.02)  # pacing between orders, not synchronisation
    result.elapsed = time.perf_counter() - began
    conn.close()
    return result


# Where one order's time goes, from the services' own histograms: (service, metric, label
# filter, what it measures). The api's /metrics sums all its processes.
STAGES = (
    ("api", "http_request_duration_seconds", 'route="/v2/orders/instant"', "the whole request"),
    ("api", "group_commit_flush_seconds", 'batch="accept"', "acceptance (debit, order, commit)"),
    ("api", "orders_instant_decision_seconds", "", "publish to decision (both hops, inventory)"),
    ("inventory", "inventory_decision_seconds", "", "inventory: command taken to commit"),
    ("api", "group_commit_flush_seconds", 'batch="record"', "recording the reservation"),
)


async def wal_written() -> tuple[int, int]:
    """WAL the PostgreSQL server has written: records since its statistics were reset, and
    bytes since it began (the whole server, so all three services' databases, and whatever
    else runs, an autovacuum worker included). The bytes are exact (the WAL's insert
    position); the record count is PostgreSQL 15's `pg_stat_wal`, to which a busy backend
    reports about once a second, so a window's count is off by up to a second's worth."""
    conn = await asyncpg.connect(
        os.environ.get("API_DATABASE_URL", "postgresql://api:api@127.0.0.1:5432/api"), timeout=10
    )
    try:
        row = await conn.fetchrow(
            "SELECT wal_records, pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS written "
            "FROM pg_stat_wal"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["wal_records"]), int(row["written"])


# How many orders each stage of the instant path took per cycle (its batches): a stage takes
# what arrived since its last cycle, so these say how busy the machine was for that rate, which
# latency follows and CPU per order does not (docs/benchmarks.md, "What a cycle costs"). Same
# shape as STAGES.
CYCLES = (
    ("api", "group_commit_batch_size", 'batch="accept"', "accept"),
    ("api", "group_commit_batch_size", 'batch="record"', "record"),
    ("inventory", "inventory_decision_batch_size", "", "inventory"),
)
Series = tuple[tuple[str, str, str, str], ...]


async def histogram_totals(series: Series = STAGES) -> dict[int, tuple[float, float]]:
    """(sum, count) of each histogram of `series`, as /metrics has them now."""
    async with httpx.AsyncClient(timeout=10) as client:
        texts = {
            name: (await client.get(f"{admin_url(name)}/metrics")).text
            for name in ("api", "inventory")
        }
    totals: dict[int, tuple[float, float]] = {}
    for i, (service, metric, labels, _) in enumerate(series):
        found = [0.0, 0.0]
        for line in texts[service].splitlines():
            for n, suffix in enumerate(("_sum", "_count")):
                if line.startswith(metric + suffix) and labels in line:
                    found[n] += float(line.rsplit(" ", 1)[1])
        totals[i] = (found[0], found[1])
    return totals


def stages_table(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> str:
    rows = ["| stage | orders | mean ms |", "|---|---|---|"]
    for i, (_, _, _, what) in enumerate(STAGES):
        seconds, count = (after[i][n] - before[i][n] for n in (0, 1))
        mean = f"{seconds / count * 1000:.2f}" if count else "-"
        rows.append(f"| {what} | {count:.0f} | {mean} |")
    return "\n".join(rows)


async def idle_cpu(seconds: float) -> dict[str, float]:
    """Cores used by each process of the stack while no order arrives."""
    before = cpu_seconds()
    await asyncio.sleep(seconds)
    used = cpu_delta(before, cpu_seconds())
    return {name: used[name] / seconds for name in used}


def autovacuum_running() -> bool:
    """Whether one of PostgreSQL's autovacuum workers runs now (by its process title)."""
    tree = _children()
    return any(
        "autovacuum worker" in _cmdline(pid)
        for root in stack_pids().get("postgres", [])
        for pid in _tree(root, tree)
    )


async def autovacuum_share(seconds: float, every_s: float = 1.0) -> float:
    """The share of `seconds` in which an autovacuum worker was running, sampled: the idle
    figure right after a stocking holds PostgreSQL's vacuum and analyze of the new rows
    when it does (docs/benchmarks.md, 2026-12-06 and 2026-12-08), which are not wake-ups
    of an idle stack."""
    seen = ticks = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen += autovacuum_running()
        ticks += 1
        await asyncio.sleep(every_s)
    return seen / ticks if ticks else 0.0


def cores_row(label: str, cores: dict[str, float]) -> str:
    return f"| {label} | " + " | ".join(f"{cores.get(n, 0):.3f}" for n in CPU_COLUMNS) + " |"


async def overload(
    sku: str,
    creds: list[dict[str, str]],
    rate: int,
    seconds: float,
    connections: int,
    generator: str,
) -> str:
    late_by_answer: dict[str, int] = {}
    late_parts: list[tuple[float, float, float]] = []
    bound_s = overload_bound_s()

    def count_late(a: Answer) -> None:
        if a.answered - a.scheduled > bound_s:
            late_by_answer[a.answer] = late_by_answer.get(a.answer, 0) + 1
            # Where its time went: the generator behind its schedule, every connection busy,
            # and after it was written (the kernel's buffers, the api, reading the answer).
            late_parts.append((a.woke - a.scheduled, a.written - a.woke, a.answered - a.written))

    result = await run_rate(
        sku, creds, rate, seconds, connections, on_answer=count_late, generator=generator
    )
    shed = result.statuses.get("HTTP 503", 0)
    worst = max(result.latencies, default=0.0) * 1000
    late = sum(late_by_answer.values())
    late_cell = f"{late} {json.dumps(late_by_answer, sort_keys=True)}" if late else "0"
    parts_cell = (
        " / ".join(f"{statistics.median(p) * 1000:.0f}" for p in zip(*late_parts, strict=True))
        if late_parts
        else "-"
    )
    shown = ("COMPLETED", "PROCESSING", "HTTP 503")
    other = {k: v for k, v in result.statuses.items() if k not in shown}
    return (
        f"| {rate} | {result.sent} | {result.statuses.get('COMPLETED', 0)} | "
        f"{result.statuses.get('PROCESSING', 0)} | {shed} | "
        f"{json.dumps(other) if other else '-'} | {result.pct(0.99):.1f} | {worst:.1f} | "
        f"{late_cell} | {parts_cell} |"
    )


def overload_bound_s() -> float:
    """Target 5's bound on any answer: the decision window + 200 ms. The window is read from
    this process's environment: `make bench` exports the stack's settings, which the api was
    started with; an api started otherwise may have another."""
    return int(os.environ.get("ORDERS_DECISION_WINDOW_MS", "500")) / 1000 + 0.2


async def soak(
    sku: str,
    creds: list[dict[str, str]],
    rate: int,
    minutes: int,
    connections: int,
    generator: str,
) -> list[str]:
    rows: list[str] = []
    for minute in range(1, minutes + 1):
        result = await run_rate(sku, creds, rate, 60, connections, generator=generator)
        rss = rss_mib()
        sizes = " | ".join(f"{rss.get(n, 0):.0f}" for n in STACK_PROCESSES)
        rows.append(
            f"| {minute} | {result.answered_per_s:.0f} | {result.pct(0.5):.1f} | "
            f"{result.pct(0.99):.1f} | {result.statuses.get('COMPLETED', 0)} | "
            f"{json.dumps({k: v for k, v in result.statuses.items() if k != 'COMPLETED'})} | "
            f"{result.cpu_ms.get('stack', 0):.2f} | {sizes} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def running_counts() -> str:
    """How many of each stack process run (the api's worker processes, not their supervisor,
    when API_PROCESSES > 1)."""
    tree = _children()
    counts = []
    for name, pids in stack_pids().items():
        if name == "api":
            workers = sum(
                1
                for pid in pids
                for child in tree.get(pid, [])
                if "-m services.api" in _cmdline(child)
            )
            counts.append(f"api x{workers or len(pids)}")
        else:
            counts.append(f"{name} x{len(pids)}")
    return ", ".join(counts)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def restart_api(processes: int) -> None:
    """Restarts the stack's api with API_PROCESSES worker processes (the rest runs on)."""
    print(f"restarting the api with {processes} process(es)", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, str(REPO / "deploy" / "local" / "stack.py"), "restart", "api"],
        env={**os.environ, "API_PROCESSES": str(processes)},
        check=True,
        stdout=subprocess.DEVNULL,
    )


def bulk_runs_codes(units: int, rounds: int, rates: list[int], seconds: float) -> int:
    """Codes the --bulk-units runs sell: per round and rate, a run without the bulk order, one
    with it, and the bulk order (none of it waits for stock, or it would measure the supplier)."""
    if not units:
        return 0
    return rounds * sum(2 * int(rate * seconds * 1.05) + units for rate in rates)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="300,600,1000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument(
        "--connections",
        type=int,
        default=128,
        help="keep-alive connections (requests in flight at most)",
    )
    parser.add_argument("--single", type=int, default=200, help="orders sent one at a time")
    parser.add_argument("--idle-seconds", type=float, default=10, help="0: skip the idle check")
    parser.add_argument("--overload", type=int, default=0, help="offered rate of the overload run")
    parser.add_argument("--overload-seconds", type=float, default=30)
    parser.add_argument("--soak-minutes", type=int, default=0)
    parser.add_argument("--soak-rate", type=int, default=500)
    parser.add_argument(
        "--api-processes",
        default="",
        help="e.g. 1,2: restart the api with each count in turn and measure each (default: the "
        "api as it runs)",
    )
    parser.add_argument(
        "--bulk-units",
        type=int,
        default=0,
        help="also run each rate with one bulk order of this many units of the same SKU, from "
        "the same account, placed 2 s into the run (alternating with runs without it)",
    )
    parser.add_argument("--bulk-rounds", type=int, default=1, help="pairs of runs per rate")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="go" if shutil.which("go") else "python",
        help="the load generator: go (benchmarks/loadgen, built on first use; the default "
        "where Go is installed) or python (this process's event loop)",
    )
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    counts = [int(n) for n in args.api_processes.split(",") if n] or [0]
    needed = (
        len(counts) * (int(sum(rates) * args.seconds * 1.05) + args.single)
        + args.overload * int(args.overload_seconds)
        + args.soak_rate * 60 * args.soak_minutes
        + bulk_runs_codes(args.bulk_units, args.bulk_rounds, rates, args.seconds)
        + 100
    )
    print(
        f"setting up: one product with {needed} codes, {args.accounts} account(s)", file=sys.stderr
    )
    sku, creds = await setup(needed, args.accounts)
    sections: list[str] = []
    for count in counts:
        if count:
            restart_api(count)
        sections.append(
            f"Processes: {running_counts()}; load generator: {args.generator} "
            f"({GENERATOR_NAMES[args.generator]})."
        )
        if args.idle_seconds > 0:
            print(f"idle for {args.idle_seconds:g}s", file=sys.stderr)
            await asyncio.sleep(3)  # let the set-up's own work settle first
            idle, vacuuming = await asyncio.gather(
                idle_cpu(args.idle_seconds), autovacuum_share(args.idle_seconds)
            )
            sections.append(
                "Idle stack, cores used (a PostgreSQL autovacuum worker was running in "
                f"{vacuuming:.0%} of the window):\n\n| | "
                + " | ".join(CPU_COLUMNS)
                + " |\n|---"
                + "|---" * len(CPU_COLUMNS)
                + "|\n"
                + cores_row("idle", idle)
            )
            print(sections[-1], file=sys.stderr)
        if args.single > 0:
            print(f"{args.single} orders one at a time", file=sys.stderr)
            before = await histogram_totals()
            single = await one_at_a_time(sku, creds[0], args.single)
            sections.append(
                f"One order at a time ({args.single} orders): p50 {single.pct(0.5):.1f} ms, "
                f"p99 {single.pct(0.99):.1f} ms, {json.dumps(single.statuses)}. Where the time "
                "went (the services' histograms over these orders):\n\n"
                + stages_table(before, await histogram_totals())
            )
            print(sections[-1], file=sys.stderr)
        if rates:
            header = (
                "| offered orders/s | answered/s | p50 ms | p95 ms | p99 ms | max ms | COMPLETED "
                "| other | "
                + " | ".join(f"{n} ms CPU/order" for n in CPU_COLUMNS)
                + " | "
                + " | ".join(f"orders per {what} cycle" for *_, what in CYCLES)
                + " | WAL records/order | WAL kB/order |\n|---|---|---|---|---|---|---|---|"
                + "---|" * (len(CPU_COLUMNS) + len(CYCLES) + 2)
            )
            rows = []
            for rate in rates:
                print(f"running {rate} orders/s for {args.seconds:g}s", file=sys.stderr)
                result = await run_rate(
                    sku, creds, rate, args.seconds, args.connections, generator=args.generator
                )
                rows.append(result.row())
                print(rows[-1], file=sys.stderr)
            sections.append("\n".join([header, *rows]))
        if rates and args.bulk_units:
            rows, notes = [], []
            for rate in rates:
                for round_ in range(1, args.bulk_rounds + 1):
                    for with_bulk in (False, True):
                        label = f"{rate}, {'with' if with_bulk else 'without'} bulk #{round_}"
                        print(f"running {label}", file=sys.stderr)
                        bulk = (
                            asyncio.create_task(
                                bulk_during(sku, creds[0], args.bulk_units, START_LEAD_S + 2.0)
                            )
                            if with_bulk
                            else None
                        )
                        result = await run_rate(
                            sku,
                            creds,
                            rate,
                            args.seconds,
                            args.connections,
                            generator=args.generator,
                        )
                        rows.append(result.row().replace(f"| {rate} |", f"| {label} |", 1))
                        print(rows[-1], file=sys.stderr)
                        if bulk is not None:
                            notes.append(f"- {label}: {await bulk}")
                            print(notes[-1], file=sys.stderr)
            sections.append(
                f"Instant orders while one bulk order of {args.bulk_units} units of the same "
                "SKU and account is accepted and delivered (runs alternated):\n\n"
                + "\n".join([header, *rows])
                + "\n\n"
                + "\n".join(notes)
            )
    if args.overload:
        print(f"overload: {args.overload}/s for {args.overload_seconds:g}s", file=sys.stderr)
        row = await overload(
            sku,
            creds,
            args.overload,
            args.overload_seconds,
            max(args.connections, 512),
            args.generator,
        )
        sections.append(
            "Overload:\n\n| offered/s | sent | COMPLETED | PROCESSING | 503 | other | p99 ms "
            f"| max ms | later than {overload_bound_s() * 1000:.0f} ms, by answer | those late, "
            "median ms: generator behind / every connection busy / after the request was "
            "written |\n|---|---|---|---|---|---|---|---|---|---|\n" + row
        )
        print(sections[-1], file=sys.stderr)
    if args.soak_minutes:
        rows = await soak(
            sku, creds, args.soak_rate, args.soak_minutes, args.connections, args.generator
        )
        sections.append(
            f"Soak at {args.soak_rate}/s, per minute:\n\n| minute | answered/s | p50 ms | p99 ms "
            "| COMPLETED | other | stack ms CPU/order | "
            + " | ".join(f"{n} RSS MiB" for n in STACK_PROCESSES)
            + " |\n|---|---|---|---|---|---|---|"
            + "---|" * len(STACK_PROCESSES)
            + "\n"
            + "\n".join(rows)
        )
    command = "benchmarks/instant_orders.py " + " ".join(sys.argv[1:])
    report = "\n\n".join(sections)
    print(report)
    if args.record:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with (REPO / "docs" / "benchmarks.md").open("a") as out:
            out.write(
                f"\n### {stamp}: {args.accounts} account(s), {args.seconds:g}s per rate\n\n"
                f"Command: `.venv/bin/python {command}` on {os.cpu_count()} cores, "
                f"Python {platform.python_version()}, the whole stack on this machine.\n\n"
                f"{report}\n"
            )


if __name__ == "__main__":
    asyncio.run(main())
