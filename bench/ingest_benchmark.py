"""Ingest: the highest heartbeat rate the backend stores into PostgreSQL with a p99 lag under
1 s, against the rate the same broker delivers to a bare subscriber that only counts, in the
same run, from the same load.

    .venv/bin/python bench/ingest_benchmark.py [--devices 1000] [--processes 2]
        [--start-rate 500] [--max-rate 64000] [--precision 0.1] [--step-s 10] [--repeat 3]
        [--bridge-processes 1,2]

The load is `--devices` real device connections (mTLS, the agent's transport) in `--processes`
processes, publishing valid heartbeats that carry their send time. A step holds one offered
rate; it is sustained when at least 99 % of the heartbeats sent in its window arrived and their
p99 lag is under 1 s. Each ladder searches for the highest sustained rate: it starts low
(`--start-rate`, halving further while even that is not sustained, so it fits any host),
doubles until a step is not sustained (or `--max-rate`, or the load cannot send faster), then
bisects between the best sustained and the lowest failed rate until they are within
`--precision` of each other. Two ladders, one after the other:

1. bare: the backend is stopped; a subscriber to every heartbeat topic counts arrivals and
   their lag (arrival time minus send time).
2. backend: `kernex-backend serve` consumes the heartbeats; arrivals are rows stored in the
   heartbeats table, the lag is when a row became visible to a poller (every 100 ms, for one
   device in 20) minus its send time.

With `--bridge-processes 1,2` the backend ladder runs once per count: `serve` alone, then with
`kernex-backend worker` processes beside it (each with its own service identity, sharing the
subscription), on the same host as the broker, PostgreSQL and the load.

The highest sustained step of each is the figure; `ingest.ratio` is backend over bare. The
figures are medians over the repeats in which both ladders sustained a step; the notes say how
many did (a repeat that sustained nothing is reported, not fatal).
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_stack import FleetStack
from heartbeat_load import HeartbeatLoad, start_load
from results import Figure, record

from kernex_protocol.topics import Channel

DELIVERED_SHARE = 0.99
LAG_LIMIT_MS = 1000.0
WARMUP_S = 3.0  # before each step
LADDER_WARMUP_S = 15.0  # before each ladder, at its start rate
DRAIN_S = 2.0
RECOVER_QUIET_S = 3.0  # after a failed step: no new arrivals for this long, the backlog is gone
RECOVER_MAX_S = 120.0
PROBE_EVERY = 20  # the backend's lag is sampled on one device in this many
LOWEST_RATE = 50.0  # below this a host is not worth measuring
MAX_STEPS = 14  # per ladder: doubling from 500/s to 64,000/s is 8, bisecting to 10 % about 4


@dataclass(frozen=True, slots=True)
class Step:
    offered_per_s: float
    sent: int
    arrived: int
    lag_p99_ms: float
    window_s: float

    @property
    def rate_per_s(self) -> float:
        return self.arrived / self.window_s

    @property
    def sustained(self) -> bool:
        return self.arrived >= DELIVERED_SHARE * self.sent and self.lag_p99_ms < LAG_LIMIT_MS

    def describe(self) -> str:
        return (
            f"offered {self.offered_per_s:.0f}/s: sent {self.sent}, arrived {self.arrived} "
            f"({self.rate_per_s:.0f}/s), p99 lag {self.lag_p99_ms:.0f} ms"
            f"{'' if self.sustained else ' - not sustained'}"
        )


def p99(values: list[float]) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class Arrivals:
    """Send times (ms) of what arrived, with each one's lag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[int, float]] = []  # (sent_ms, lag_ms)

    def add(self, sent_ms: int, arrived_s: float) -> None:
        with self._lock:
            self._seen.append((sent_ms, arrived_s * 1000 - sent_ms))

    def lags_between(self, start_ms: int, end_ms: int) -> list[float]:
        with self._lock:
            return [lag for sent, lag in self._seen if start_ms <= sent < end_ms]


@dataclass(frozen=True, slots=True)
class Search:
    """How a ladder looks for the highest sustained rate."""

    start: float
    ceiling: float
    precision: float
    step_s: float


def run_ladder(
    load: HeartbeatLoad,
    search: Search,
    *,
    count_arrived: Callable[[int, int], int],
    lags: Arrivals,
    label: str,
) -> list[Step]:
    steps: list[Step] = []

    def measure(rate: float) -> Step:
        load.set_rate(rate)
        time.sleep(WARMUP_S)
        start_ms, sent_before = int(time.time() * 1000), load.published()
        time.sleep(search.step_s)
        end_ms, sent_after = int(time.time() * 1000), load.published()
        time.sleep(DRAIN_S)
        step = Step(
            offered_per_s=rate,
            sent=sent_after - sent_before,
            arrived=count_arrived(start_ms, end_ms),
            lag_p99_ms=p99(lags.lags_between(start_ms, end_ms)),
            window_s=(end_ms - start_ms) / 1000,
        )
        print(f"{label}: {step.describe()}", flush=True)
        steps.append(step)
        if not step.sustained:
            recover(start_ms)
        return step

    def recover(since_ms: int) -> None:
        # An overloaded step leaves a backlog (in the broker's queue and the consumer's
        # buffers) that the next steps would inherit, failing below the real ceiling: stop the
        # load until what was sent since the step began has stopped arriving.
        load.set_rate(0)
        deadline = time.monotonic() + RECOVER_MAX_S
        arrived, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = count_arrived(since_ms, int(time.time() * 1000))
            if now != arrived:
                arrived, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= RECOVER_QUIET_S:
                break
            time.sleep(1.0)  # each look is a count over the stored rows
        load.set_rate(search.start)

    # Unmeasured: a consumer that has just started (connections, prepared statements, the
    # first partitions touched) lags for a few seconds, which must not pass for its ceiling.
    load.set_rate(search.start)
    time.sleep(LADDER_WARMUP_S)
    best_step: Step | None = None
    failed_at: float | None = None  # the lowest offered rate not sustained
    rate = search.start
    # Down first if even the start is too much for this host, then up by doubling.
    while len(steps) < MAX_STEPS:
        step = measure(rate)
        load_limited = step.sent < 0.95 * rate * step.window_s
        if step.sustained:
            best_step = step
            if load_limited or rate >= search.ceiling:
                if load_limited:
                    print(f"{label}: the load cannot send faster; stopping here", flush=True)
                break
            if failed_at is not None:
                break  # sustained just below a failed rate: bisect from here
            rate = min(rate * 2, search.ceiling)
        else:
            failed_at = rate
            if best_step is not None or rate / 2 < LOWEST_RATE:
                break
            rate /= 2
    # Then halve the gap between the best sustained and the lowest failed rate.
    while (
        best_step is not None
        and failed_at is not None
        and len(steps) < MAX_STEPS
        and failed_at - best_step.offered_per_s > search.precision * best_step.offered_per_s
    ):
        middle = (best_step.offered_per_s + failed_at) / 2
        step = measure(middle)
        if step.sustained:
            best_step = step
        else:
            failed_at = middle
    load.set_rate(0)
    time.sleep(DRAIN_S)
    return steps


def bare_ladder(stack: FleetStack, load: HeartbeatLoad, search: Search) -> list[Step]:
    arrivals = Arrivals()

    def counted(topic: str, payload: bytes, at: float) -> None:
        arrivals.add(json.loads(payload)["metrics"]["sent_ms"], at)

    with stack.subscriber("bare", Channel.HEARTBEAT, counted):
        return run_ladder(
            load,
            search,
            count_arrived=lambda a, b: len(arrivals.lags_between(a, b)),
            lags=arrivals,
            label="bare",
        )


class StoredPoller:
    """Polls the heartbeats of the probe devices; a row's lag is when it was first seen."""

    def __init__(self, stack: FleetStack, probes: list[str], arrivals: Arrivals) -> None:
        self._url = stack.pg.url("kernex", driver="postgresql")
        self._probes = probes
        self._arrivals = arrivals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    async def _poll(self) -> None:
        conn = await asyncpg.connect(self._url)
        seen: set[tuple[str, int]] = set()
        query = (
            "SELECT device_id, sequence, (metrics->>'sent_ms')::bigint FROM heartbeats "
            "WHERE device_id = ANY($1) AND received_at > now() - interval '5 seconds'"
        )
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(query, self._probes)
                now = time.time()
                for device_id, sequence, sent_ms in rows:
                    if (device_id, sequence) not in seen and sent_ms is not None:
                        seen.add((device_id, sequence))
                        self._arrivals.add(sent_ms, now)
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    def __enter__(self) -> "StoredPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def backend_ladder(
    stack: FleetStack, load: HeartbeatLoad, ids: list[str], search: Search
) -> list[Step]:
    arrivals = Arrivals()

    def stored(start_ms: int, end_ms: int) -> int:
        return int(
            stack.sql(
                "SELECT count(*) FROM heartbeats "
                "WHERE (metrics->>'sent_ms')::bigint >= $1 AND (metrics->>'sent_ms')::bigint < $2",
                start_ms,
                end_ms,
            )[0][0]
        )

    with StoredPoller(stack, ids[::PROBE_EVERY], arrivals):
        return run_ladder(load, search, count_arrived=stored, lags=arrivals, label="backend")


def best(steps: list[Step]) -> Step | None:
    sustained = [s for s in steps if s.sustained]
    return max(sustained, key=lambda s: s.rate_per_s) if sustained else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--start-rate", type=float, default=500.0, help="msg/s of the first step")
    parser.add_argument("--max-rate", type=float, default=64000.0, help="no step offers more")
    parser.add_argument(
        "--precision", type=float, default=0.1, help="stop bisecting within this share"
    )
    parser.add_argument("--step-s", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="both ladders, this many times")
    parser.add_argument(
        "--bridge-processes",
        default="1",
        help="comma-separated: a backend ladder for each number of bridge processes (serve "
        "plus `kernex-backend worker` processes), e.g. 1,2",
    )
    parser.add_argument("--keep", type=Path, help="keep the run's files here")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.bridge_processes.split(",")})
    if counts[0] < 1:
        parser.error("--bridge-processes: at least one")
    search = Search(args.start_rate, args.max_rate, args.precision, args.step_s)
    root = args.keep or Path(tempfile.mkdtemp(prefix="kernex-bench-ingest-"))
    stack = FleetStack.unbudgeted(root)
    load: HeartbeatLoad | None = None
    # Per repeat: the bare ladder, then a backend ladder per number of bridge processes.
    ladders: list[tuple[list[Step], dict[int, list[Step]]]] = []
    try:
        stack.start()
        ids, load = start_load(stack, args.devices, args.processes)
        for _ in range(args.repeat):
            stack.stop_workers()
            stack.stop_backend()
            bare = bare_ladder(stack, load, search)
            stack.start_backend()
            backends: dict[int, list[Step]] = {}
            for count in counts:
                stack.start_workers(count - 1 - len(stack.workers))
                backends[count] = backend_ladder(stack, load, ids, search)
            ladders.append((bare, backends))
    finally:
        if load is not None:
            load.stop()
        stack.stop()
    first = counts[0]
    runs = [
        (b, k)
        for b, k in ((best(bare), best(backends[first])) for bare, backends in ladders)
        if b and k
    ]
    if not runs:
        raise SystemExit(
            f"no repeat sustained a step in both ladders, down to {LOWEST_RATE:.0f}/s: the "
            "host cannot carry this load at all; nothing to record"
        )
    bare_rates = [b.rate_per_s for b, _ in runs]
    backend_rates = [k.rate_per_s for _, k in runs]
    ratios = [k / b for k, b in zip(backend_rates, bare_rates, strict=True)]
    ratio = round(statistics.median(ratios), 2)
    figures = [
        Figure(
            "ingest.rate_per_s",
            round(statistics.median(backend_rates)),
            "msg/s",
            round(statistics.median(bare_rates)),
            ratio,
        ),
        Figure("ingest.ratio", ratio, "x", 0.8, round(ratio / 0.8, 2)),
        Figure(
            "ingest.lag_p99_ms",
            round(statistics.median(k.lag_p99_ms for _, k in runs)),
            "ms",
            LAG_LIMIT_MS,
        ),
    ]
    for count in counts[1:]:
        pairs = [
            (b, k)
            for b, k in ((best(bare), best(backends[count])) for bare, backends in ladders)
            if b and k
        ]
        if pairs:
            rate = statistics.median(k.rate_per_s for _, k in pairs)
            bare_rate = statistics.median(b.rate_per_s for b, _ in pairs)
            figures.append(
                Figure(
                    f"ingest.rate_per_s_{count}_processes",
                    round(rate),
                    "msg/s",
                    round(bare_rate),
                    round(statistics.median(k.rate_per_s / b.rate_per_s for b, k in pairs), 2),
                )
            )
    notes = [
        f"ingest: {args.devices} device connections in {args.processes} load processes; steps "
        f"of {args.step_s:.0f} s after {WARMUP_S:.0f} s of warm-up; sustained = at least "
        f"{DELIVERED_SHARE:.0%} arrived and p99 lag under {LAG_LIMIT_MS:.0f} ms. Each ladder "
        f"starts at {args.start_rate:.0f}/s, doubles until a step fails, then bisects to "
        f"within {args.precision:.0%}. Medians of the {len(runs)} of {args.repeat} repeats in "
        "which both ladders sustained a step; the ratio is the median of each repeat's ratio.",
    ]
    if len(counts) > 1:
        notes.append(
            f"`ingest.rate_per_s` is {first} bridge process(es); "
            + ", ".join(f"`ingest.rate_per_s_{n}_processes`" for n in counts[1:])
            + " ran `kernex-backend worker` processes beside `serve` (each with its own service "
            "identity, sharing the subscription), on the same two cores as the broker, "
            "PostgreSQL and the load, after the same bare ladder."
        )
    for number, (bare, backends) in enumerate(ladders, 1):
        notes.append(f"run {number}, bare subscriber: " + "; ".join(s.describe() for s in bare))
        for count, steps in backends.items():
            notes.append(
                f"run {number}, backend with {count} bridge process(es): "
                + "; ".join(s.describe() for s in steps)
            )
    if any(
        b.offered_per_s >= args.max_rate or b.sent < 0.95 * b.offered_per_s * b.window_s
        for b, _ in runs
    ):
        notes.append(
            "The bare subscriber sustained the top of its search (the ceiling, or what the load "
            "could send): its real ceiling is higher, so the ratio is an upper bound there."
        )
    command = (
        f".venv/bin/python bench/ingest_benchmark.py --devices {args.devices} "
        f"--processes {args.processes} --start-rate {args.start_rate:.0f} "
        f"--max-rate {args.max_rate:.0f} --precision {args.precision} "
        f"--step-s {args.step_s:.0f} --repeat {args.repeat}"
        + (f" --bridge-processes {args.bridge_processes}" if len(counts) > 1 else "")
    )
    record("Ingest: heartbeats into PostgreSQL against a bare subscriber", command, figures, notes)


if __name__ == "__main__":
    main()
