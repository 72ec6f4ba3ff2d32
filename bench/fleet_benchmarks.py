"""Benchmarks of the whole fleet on this machine: capacity, API latency under ingest, notify,
and complete. One fleet of simulated devices (kernex-sim: the real agent, real mTLS) is
started once and measured in turn; every figure is compared with a baseline from the same run.

    .venv/bin/python bench/fleet_benchmarks.py --devices 10000 [--window-s 120]
        [--only capacity,api,notify,complete,rollout] [--complete-first 1000]

- capacity: devices connected, the connection ramp (seconds until all are online in the
  database), broker and backend memory and CPU while the fleet beats every 30 s (baseline: the
  same processes idle before the fleet came), and whether the ingest lag stays flat (the age of
  the newest stored heartbeat, sampled every 5 s, first half of the window against the second).
- api: p50 and p99 of device listing and filtering while the ingest runs (baseline: /health).
- notify: seconds from POST /deployments until 50, 95 and 100 % of devices have received their
  notice (reported their first progress), for a 1 KiB bundle; baseline: a bare publisher
  sending every device a retained QoS 1 message of a notice's size on its deployment topic,
  until the same kind of observer holds all of them (notify.ratio).
- complete: seconds until `--complete-first` devices, then all, have SUCCEEDED with a 1 MiB
  bundle, next to the time the same object store needs to serve as many 1 MiB downloads to a
  plain concurrent client (32 threads) in the same run.
- rollout: the same fleet in waves [1%, 10%, 100%] with 90 % success thresholds and no rate
  limit, from POST to COMPLETED, beside complete.<n>k_s from the same run (goal: at most 1.3x);
  and how long POST /deployments takes with a selector over the whole fleet.
"""

import argparse
import concurrent.futures
import json
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paho.mqtt.client as mqtt
from fleet_stack import FleetStack
from paho.mqtt.enums import CallbackAPIVersion
from results import Figure, record

from kernex_protocol.topics import Channel, topic_for

MiB = 1024 * 1024
STALL_S = 180.0  # no execution moved on for this long: reports were lost; fail, do not hang
TMPFS = "/dev/shm"  # the simulated devices' state (see FleetStack.start_sim)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(processes: dict[str, Any]) -> dict[str, float]:
    return {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}


def measure_processes(stack: FleetStack, seconds: float) -> dict[str, float]:
    """RSS (MiB) at the end and CPU (% of one core) over `seconds`, per process."""
    processes = stack.processes()
    before = cpu_seconds(processes)
    time.sleep(seconds)
    after = cpu_seconds(processes)
    out: dict[str, float] = {}
    for name, process in processes.items():
        out[f"{name}_rss_mib"] = round(process.memory_info().rss / MiB, 1)
        out[f"{name}_cpu_pct"] = round(100 * (after[name] - before[name]) / seconds, 1)
    return out


def ingest_lag_s(stack: FleetStack) -> float:
    row = stack.sql("SELECT extract(epoch FROM now() - max(received_at)) FROM heartbeats")
    return float(row[0][0] or 0.0)


def capacity(
    stack: FleetStack, devices: int, window_s: float, idle: dict[str, float], ramp_s: float
) -> tuple[list[Figure], list[str]]:
    stored_before = stack.sql("SELECT count(*) FROM heartbeats")[0][0]
    processes = stack.processes()
    before = cpu_seconds(processes)
    lags: list[float] = []
    rss: dict[str, list[float]] = {"backend": [], "broker": []}
    started = time.monotonic()
    while time.monotonic() - started < window_s:
        lags.append(ingest_lag_s(stack))
        for name, process in processes.items():
            rss[name].append(process.memory_info().rss / MiB)
        time.sleep(5)
    elapsed = time.monotonic() - started
    after = cpu_seconds(processes)
    stored = stack.sql("SELECT count(*) FROM heartbeats")[0][0] - stored_before
    online = stack.sql("SELECT count(*) FROM devices WHERE online")[0][0]
    half = len(lags) // 2
    first, second = statistics.median(lags[:half]), statistics.median(lags[half:])
    figures = [
        Figure(
            "capacity.connected_devices", online, "devices", devices, round(online / devices, 3)
        ),
        Figure("capacity.connect_ramp_s", round(ramp_s, 1), "s"),
    ]
    for name in ("broker", "backend"):
        cpu = round(100 * (after[name] - before[name]) / elapsed, 1)
        peak = round(max(rss[name]), 1)
        figures.append(
            Figure(
                f"capacity.{name}_rss_mib",
                peak,
                "MiB",
                idle[f"{name}_rss_mib"],
                round(peak / idle[f"{name}_rss_mib"], 2),
            )
        )
        figures.append(
            Figure(f"capacity.{name}_cpu_pct", cpu, "% of a core", idle[f"{name}_cpu_pct"])
        )
    rate = stored / elapsed
    figures += [
        Figure(
            "capacity.heartbeats_stored_per_s",
            round(rate, 1),
            "/s",
            round(devices / 30, 1),
            round(rate / (devices / 30), 3),
        ),
        Figure("capacity.ingest_lag_p50_first_half_s", round(first, 2), "s"),
        Figure("capacity.ingest_lag_p50_second_half_s", round(second, 2), "s"),
        Figure("capacity.ingest_lag_p99_s", round(percentile(lags, 0.99), 2), "s"),
    ]
    notes = [
        f"capacity: {devices} simulated devices (kernex-sim: a process per 2,000 devices, "
        "each with one network thread, at nice 10) over mTLS, "
        f"heartbeats every 30 s with start jitter, measured for {elapsed:.0f} s once all were "
        "online. Baselines: the same broker and backend processes idle, before the fleet "
        "connected; for the heartbeat rate, devices/30 s.",
        "Ingest lag: age of the newest stored heartbeat (now - max(received_at)), sampled every "
        f"5 s: medians {first:.2f} s (first half) and {second:.2f} s (second half).",
    ]
    return figures, notes


def api_latency(stack: FleetStack, requests: int) -> tuple[list[Figure], list[str]]:
    def timed(client: Any, path: str, **params: Any) -> float:
        started = time.perf_counter()
        response = client.get(path, params=params)
        response.raise_for_status()
        return (time.perf_counter() - started) * 1000

    with stack.client() as api:
        health = [timed(api, "/health") for _ in range(requests)]
        listing = [timed(api, "/devices", limit=50, offset=i * 50 % 5000) for i in range(requests)]
        filtered = [
            timed(
                api,
                "/devices",
                limit=50,
                online="true",
                device_type="bench-board",
                status="active",
                offset=i * 50 % 5000,
            )
            for i in range(requests)
        ]
    base = round(statistics.median(health), 2)

    def latency(name: str, samples: list[float]) -> list[Figure]:
        median = statistics.median(samples)
        return [
            Figure(f"api.{name}_p50_ms", round(median, 2), "ms", base, round(median / base, 2)),
            Figure(f"api.{name}_p99_ms", round(percentile(samples, 0.99), 2), "ms"),
        ]

    figures = latency("list", listing) + latency("filter", filtered)
    notes = [
        f"api: {requests} sequential requests each over real HTTP while the fleet's heartbeats "
        "were being ingested: GET /devices?limit=50 at varying offsets, and the same filtered by "
        "online, device_type and status. Baseline: GET /health (no database) in the same run."
    ]
    return figures, notes


def wait_executions(
    stack: FleetStack, deployment: str, count: int, states: tuple[str, ...], timeout: float
) -> list[float]:
    """Times (s from now) at which the number of executions in `states` first reached each
    integer percentage of `count`."""
    started = time.monotonic()
    reached: list[float] = []
    # Every state's count: the run is stalled when none of them moves (devices still
    # downloading or checking are progress, although none has reached `states` yet).
    query = (
        "SELECT state, count(*) FROM deployment_executions WHERE deployment_id = $1 GROUP BY state"
    )
    last_change, last_seen, done = started, None, 0
    while time.monotonic() - started < timeout:
        seen = {row[0]: row[1] for row in stack.sql(query, uuid.UUID(deployment))}
        done = sum(seen.get(state, 0) for state in states)
        while len(reached) < 100 and done >= count * (len(reached) + 1) / 100:
            reached.append(time.monotonic() - started)
        if len(reached) == 100:
            return reached
        if seen != last_seen:
            last_change, last_seen = time.monotonic(), seen
        elif time.monotonic() - last_change > STALL_S:
            raise RuntimeError(
                f"{deployment}: stuck at {done} of {count} in {states} for {STALL_S} s "
                "(reports lost?)"
            )
        time.sleep(0.2)
    raise RuntimeError(f"{deployment}: only {done} of {count} in {states} after {timeout} s")


RECEIVED = (
    "downloading",
    "verifying",
    "installing",
    "health_check",
    "succeeded",
    "failed",
    "rolled_back",
)


# A message of a notice's size that every agent drops at once as malformed (protocol version 0),
# so the baseline costs the devices what a notice's delivery does and nothing more.
BASELINE_PAYLOAD = json.dumps({"v": 0, "pad": "x" * 1400}).encode()


def service_publisher(stack: FleetStack, in_flight: int = 64) -> mqtt.Client:
    """A paho client with a service identity of its own (granted on the broker), `in_flight`
    QoS 1 messages in flight and an unbounded queue; not connected yet."""
    name = f"bench-publisher-{uuid.uuid4().hex[:6]}"
    folder = stack.root / name
    stack.broker.add_service_identity(name, folder)
    context = ssl.create_default_context(cafile=str(folder / "ca-chain.pem"))
    context.load_cert_chain(str(folder / "service.crt"), str(folder / "service.key"))
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    publisher.tls_set_context(context)
    publisher.max_inflight_messages_set(in_flight)
    publisher.max_queued_messages_set(0)  # unbounded: paho paces them through the window
    return publisher


def bare_notify(stack: FleetStack, ids: list[str], in_flight: int = 64) -> float:
    """The notify baseline: seconds until an observer holds a retained QoS 1 message on every
    device's deployment topic, sent by a bare publisher with a service identity of its own and
    as many messages in flight as the backend allows itself (KERNEX_MQTT__PUBLISH_CONCURRENCY)."""
    wanted = {topic_for(device_id, Channel.DEPLOYMENT) for device_id in ids}
    held: set[str] = set()
    all_held = threading.Event()
    lock = threading.Lock()

    def seen(topic: str, payload: bytes, _at: float) -> None:
        if payload == BASELINE_PAYLOAD:
            with lock:
                held.add(topic)
                if held >= wanted:
                    all_held.set()

    publisher = service_publisher(stack, in_flight)
    with stack.subscriber("bare-observer", Channel.DEPLOYMENT, seen):
        publisher.connect("localhost", stack.broker.port, keepalive=60)
        publisher.loop_start()
        started = time.time()
        for topic in sorted(wanted):
            publisher.publish(topic, BASELINE_PAYLOAD, qos=1, retain=True)
        if not all_held.wait(900):
            raise RuntimeError(f"the bare observer saw {len(held)} of {len(wanted)} messages")
        elapsed = time.time() - started
        publisher.disconnect()
        publisher.loop_stop()
    return elapsed


def notify(stack: FleetStack, ids: list[str]) -> tuple[list[Figure], list[str]]:
    """Devices hold their notice when the broker delivers it; an observer subscribed to every
    device's deployment topic sees each delivery as the devices do (the broker fans a publish
    out to all its subscribers in one pass). The end-to-end time, until every device has
    reported its first progress and the backend stored it, is given beside it."""
    bare_s = bare_notify(stack, ids)
    bundle = stack.upload("1.0.0", 1024)
    held: dict[str, dict[str, float]] = {}  # deployment -> device -> seconds since epoch
    lock = threading.Lock()

    def seen(topic: str, payload: bytes, at: float) -> None:
        if not payload or payload == BASELINE_PAYLOAD:  # the baseline's, still retained
            return
        notice = json.loads(payload)
        with lock:
            held.setdefault(notice["deployment_id"], {}).setdefault(notice["device_id"], at)

    # At QoS 0 (each device has a window of its own for its single notice; this one client
    # would otherwise take all 10,000 through one). A notice it misses fails the run below (the
    # count is checked), so QoS 0 cannot flatter the figure.
    with stack.subscriber("observer", Channel.DEPLOYMENT, seen):
        started = time.time()
        deployment = stack.deploy(bundle, ids)
        post_s = time.time() - started
        reported = wait_executions(stack, deployment, len(ids), RECEIVED, timeout=600)
        wait_executions(stack, deployment, len(ids), ("succeeded",), timeout=900)
    with lock:
        times = sorted(at - started for at in held.get(deployment, {}).values())
    if len(times) < len(ids):
        raise RuntimeError(f"the observer saw {len(times)} of {len(ids)} notices")
    n = len(ids)
    tag = f"{n // 1000}k" if n >= 1000 else str(n)
    figures = [
        Figure(f"notify.p50_s_{tag}", round(times[n // 2 - 1], 2), "s"),
        Figure(f"notify.p95_s_{tag}", round(times[int(n * 0.95) - 1], 2), "s"),
        Figure(f"notify.p100_s_{tag}", round(times[-1], 2), "s", 10.0, round(times[-1] / 10, 2)),
        Figure(f"notify.reported_p100_s_{tag}", round(post_s + reported[99], 2), "s"),
        Figure(f"notify.bare_p100_s_{tag}", round(bare_s, 2), "s"),
        Figure(
            "notify.ratio",
            round(times[-1] / bare_s, 2),
            "x",
            1.5,
            round(times[-1] / bare_s / 1.5, 2),
        ),
    ]
    notes = [
        f"notify: POST /deployments for {n} devices (a 1 KiB bundle) took {post_s:.2f} s; times "
        "run from the POST until the broker delivered each device's notice (seen by an observer "
        "subscribed at QoS 0 to every deployment topic). notify.reported_p100 is the end-to-end "
        "time until every device had reported its first progress and the backend had stored it. "
        "Baseline for p100: the 10 s goal (AWS IoT Jobs notifies at most 1,000 devices a "
        "minute).",
        f"notify baseline (same run, just before): a bare publisher put a retained QoS 1 "
        f"message of {len(BASELINE_PAYLOAD)} bytes on each of the {n} deployment topics, 64 in "
        f"flight, and an observer held all of them after {bare_s:.2f} s; notify.ratio is "
        "notify.p100 over that (goal 1.5, the baseline column).",
    ]
    return figures, notes


def raw_download_s(stack: FleetStack, bundle: dict[str, Any], count: int) -> float:
    """Seconds for a plain 32-thread client to fetch the bundle `count` times from the store."""
    with stack.client() as api:
        url = api.post(f"/bundles/{bundle['id']}/download-url").json()["url"]

    def fetch(_: int) -> int:
        with urllib.request.urlopen(url, timeout=60) as response:
            return len(response.read())

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        total = sum(pool.map(fetch, range(count)))
    assert total == count * bundle["size_bytes"]
    return time.monotonic() - started


def complete(stack: FleetStack, ids: list[str], first: int) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    notes: list[str] = []
    rounds = [("1.1.0", ids[:first])] + ([("1.2.0", ids)] if len(ids) > first else [])
    for version, targets in rounds:
        bundle = stack.upload(version, MiB)
        baseline = raw_download_s(stack, bundle, len(targets))
        started = time.monotonic()
        deployment = stack.deploy(bundle, targets)
        wait_executions(stack, deployment, len(targets), ("succeeded",), timeout=3600)
        took = time.monotonic() - started
        name = (
            f"complete.{len(targets) // 1000}k_s"
            if len(targets) >= 1000
            else (f"complete.{len(targets)}_s")
        )
        figures.append(
            Figure(name, round(took, 1), "s", round(baseline, 1), round(took / baseline, 2))
        )
        notes.append(
            f"complete: {len(targets)} devices to SUCCEEDED with a 1 MiB bundle in {took:.1f} s; "
            f"the same store served {len(targets)} downloads of it to a plain 32-thread client in "
            f"{baseline:.1f} s in the same run (the baseline)."
        )
    return figures, notes


def wait_status(stack: FleetStack, deployment: str, status: str, timeout: float) -> float:
    """Seconds until the deployment's status is `status`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if stack.deployment(deployment)["status"] == status:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"{deployment}: not {status} after {timeout} s")


def rollout(
    stack: FleetStack, ids: list[str], complete_figures: list[Figure]
) -> tuple[list[Figure], list[str]]:
    """Waves against all at once: the same bundle size and fleet as complete.<n>k_s."""
    bundle = stack.upload("1.3.0", MiB)
    started = time.monotonic()
    deployment = stack.deploy(
        bundle,
        None,
        selector={"all": True},
        strategy={"waves": ["1%", "10%", "100%"], "success_threshold_percent": 90},
    )
    post_s = time.monotonic() - started
    took = post_s + wait_status(stack, deployment, "completed", timeout=3600)
    n = len(ids)
    tag = f"{n // 1000}k" if n >= 1000 else str(n)
    baseline = next((f for f in complete_figures if f.name == f"complete.{tag}_s"), None)
    base_value = baseline.value if baseline else None
    figures = [
        Figure(
            f"rollout.{tag}_waves_s",
            round(took, 1),
            "s",
            base_value,
            round(took / base_value, 2) if base_value else None,
        ),
        Figure(
            f"rollout.create_selector_{tag}_s", round(post_s, 2), "s", 2.0, round(post_s / 2, 2)
        ),
    ]
    notes = [
        f"rollout: {n} devices in waves [1%, 10%, 100%] with 90 % thresholds, no rate limit, "
        f"POST to COMPLETED in {took:.1f} s; baseline: complete.{tag}_s (all at once, same "
        f"bundle size) from the same run. POST /deployments with selector all: true over the "
        f"fleet answered in {post_s:.2f} s (baseline: the 2 s goal)."
    ]
    return figures, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--window-s", type=float, default=120.0)
    parser.add_argument("--only", default="capacity,api,notify,complete,rollout")
    parser.add_argument("--complete-first", type=int, default=1000)
    parser.add_argument("--api-requests", type=int, default=300)
    parser.add_argument("--ramp", type=float, default=400.0)
    parser.add_argument("--keep", type=Path, help="keep the run's files here")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    root = args.keep or Path(tempfile.mkdtemp(prefix="kernex-bench-fleet-"))
    stack = FleetStack(root)
    agent_state = Path(tempfile.mkdtemp(prefix="kernex-bench-agents-", dir=TMPFS))
    figures: list[Figure] = []
    notes: list[str] = []
    sim = None
    try:
        stack.start()
        ids = [f"bench-{i:0{max(5, len(str(args.devices)))}d}" for i in range(1, args.devices + 1)]
        stack.register(ids)
        idle = measure_processes(stack, 10)
        sim = stack.start_sim(
            args.devices,
            ramp=args.ramp,
            summary=root / "sim-summary.json",
            agent_state_dir=agent_state,
        )
        ramp_s = stack.wait_online(args.devices, timeout=1800)
        print(f"{args.devices} devices online in {ramp_s:.1f} s", flush=True)
        if "capacity" in wanted:
            f, n = capacity(stack, args.devices, args.window_s, idle, ramp_s)
            figures += f
            notes += n
        if "api" in wanted:
            f, n = api_latency(stack, args.api_requests)
            figures += f
            notes += n
        if "notify" in wanted:
            f, n = notify(stack, ids)
            figures += f
            notes += n
        if "complete" in wanted:
            f, n = complete(stack, ids, args.complete_first)
            figures += f
            notes += n
        if "rollout" in wanted:
            f, n = rollout(stack, ids, figures)
            figures += f
            notes += n
    finally:
        if sim is not None:
            sim.send_signal(2)
            sim.wait(300)
        stack.stop()
        shutil.rmtree(agent_state, ignore_errors=True)
    summary = (
        json.loads((root / "sim-summary.json").read_text())
        if (root / "sim-summary.json").exists()
        else {}
    )
    notes.append(f"kernex-sim summary: ramp {summary.get('ramp')}, sent {summary.get('sent')}.")
    command = (
        f".venv/bin/python bench/fleet_benchmarks.py --devices {args.devices} "
        f"--window-s {args.window_s:.0f} --only {args.only}"
    )
    record(f"Fleet: {args.devices} devices ({args.only})", command, figures, notes)


if __name__ == "__main__":
    main()
