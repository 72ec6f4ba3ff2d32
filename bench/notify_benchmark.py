"""Benchmark: the notifier alone, against a bare publisher, with no fleet reacting.

fleet_benchmarks.py measures notify with 10,000 simulated agents that start their updates the
moment they hold a notice, on the same two cores: the product's share is then mixed with the
fleet's reaction. Here the devices are registered but none is connected, so the figure is the
backend's own: from POST /deployments until an observer subscribed to every deployment topic
holds every device's notice (retained, as a device that connects later finds it), against a
bare publisher putting a notice-sized retained QoS 1 message on the same topics just before,
in the same round (fleet_benchmarks.bare_notify). Each round has devices of its own, and their
topics are emptied after it; medians.

    .venv/bin/python bench/notify_benchmark.py [--devices 10000] [--rounds 3]
"""

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_benchmarks import BASELINE_PAYLOAD, bare_notify, service_publisher
from fleet_stack import FleetStack
from results import Figure, median, record

from kernex_protocol.topics import Channel, topic_for


def product_notify(stack: FleetStack, ids: list[str], version: str) -> tuple[float, float, float]:
    """(POST seconds, p50, p100): seconds from the POST until the observer held the notices."""
    bundle = stack.upload(version, 1024)
    # Known by its topic, as the bare observer knows the baseline's: parsing each notice here
    # would be this observer's work on the same two cores, not the backend's.
    device_of = {topic_for(device_id, Channel.DEPLOYMENT): device_id for device_id in ids}
    held: dict[str, float] = {}
    lock = threading.Lock()
    everyone = threading.Event()

    def seen(topic: str, payload: bytes, at: float) -> None:
        device_id = device_of.get(topic)
        if device_id is None or not payload or payload == BASELINE_PAYLOAD:
            return  # another round's device, a cleared topic or the baseline's message
        with lock:
            held.setdefault(device_id, at)
            if len(held) == len(ids):
                everyone.set()

    with stack.subscriber(f"observer-{version}", Channel.DEPLOYMENT, seen):
        started = time.time()
        stack.deploy(bundle, ids)
        post_s = time.time() - started
        if not everyone.wait(600):
            raise RuntimeError(f"the observer saw {len(held)} of {len(ids)} notices")
    times = sorted(at - started for at in held.values())
    return post_s, times[len(times) // 2], times[-1]


def clear_notices(stack: FleetStack, ids: list[str]) -> None:
    """Empty the round's retained deployment topics, so the next round's observers do not get
    them all on subscribing (which slowed each round more than the last)."""
    publisher = service_publisher(stack)
    publisher.connect("localhost", stack.broker.port, keepalive=60)
    publisher.loop_start()
    try:
        sent = [
            publisher.publish(topic_for(device_id, Channel.DEPLOYMENT), b"", qos=1, retain=True)
            for device_id in ids
        ]
        for info in sent:
            info.wait_for_publish(120)
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=0, help="`kernex-backend worker` processes beside serve"
    )
    parser.add_argument("--keep", type=Path, help="keep the run's files here")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="kernex-bench-notify-"))
    stack = FleetStack(root)
    bare: list[float] = []
    posts: list[float] = []
    p50s: list[float] = []
    p100s: list[float] = []
    try:
        stack.start()
        stack.start_workers(args.workers)
        for round_ in range(1, args.rounds + 1):
            # Devices of their own per round: none is busy with the last round's deployment.
            ids = [f"bench-r{round_}-{i:05d}" for i in range(1, args.devices + 1)]
            stack.register(ids)
            bare.append(bare_notify(stack, ids))
            post_s, p50, p100 = product_notify(stack, ids, f"1.0.{round_}")
            clear_notices(stack, ids)
            posts.append(post_s)
            p50s.append(p50)
            p100s.append(p100)
            print(
                f"round {round_}: bare {bare[-1]:.2f} s; POST {post_s:.2f} s, "
                f"p50 {p50:.2f} s, p100 {p100:.2f} s",
                flush=True,
            )
    finally:
        stack.stop()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    n = args.devices
    tag = f"{n // 1000}k" if n >= 1000 else str(n)
    ratios = [p / b for p, b in zip(p100s, bare, strict=True)]
    figures = [
        Figure(f"notify.alone_post_s_{tag}", median(posts), "s"),
        Figure(f"notify.alone_p50_s_{tag}", median(p50s), "s"),
        Figure(f"notify.alone_p100_s_{tag}", median(p100s), "s", median(bare), None),
        Figure("notify.alone_ratio", median(ratios), "x", 1.5, round(median(ratios) / 1.5, 2)),
    ]
    notes = [
        f"{n} registered devices, none connected; `kernex-backend serve` and {args.workers} "
        f"`kernex-backend worker` process(es); {args.rounds} rounds, each a bare publisher "
        "(64 QoS 1 messages in flight, as the backend allows itself) then a deployment of a "
        "new 1 KiB release to every device; medians. notify.alone_ratio is the median of the "
        "rounds' p100 over that round's bare publisher (goal 1.5).",
        "Per round (bare / POST / p100, s): "
        + "; ".join(
            f"{b:.2f} / {p:.2f} / {t:.2f}" for b, p, t in zip(bare, posts, p100s, strict=True)
        )
        + ".",
    ]
    command = f".venv/bin/python bench/notify_benchmark.py --devices {n} --rounds {args.rounds}" + (
        f" --workers {args.workers}" if args.workers else ""
    )
    record("Notify, the backend alone", command, figures, notes)


if __name__ == "__main__":
    main()
