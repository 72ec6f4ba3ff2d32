"""Load held while attacked: does the legitimate fleet notice hostile devices?

The whole product on this machine (fleet_stack.py, the backend allowed to quarantine devices at
the broker) with `--devices` simulated devices running the real agent (heartbeats every
`--heartbeat-s`). Each measurement is taken calm and under attack:

- ingest: the simulated devices' heartbeats stored per second over `--window-s`, calm and then
  attacked;
- complete: `--rounds` pairs of deployments of a small bundle to `--update-devices` devices
  each (a different set each time), from creation until every execution succeeded, calm and
  attacked in turn; the medians count. Alternating matters on a shared host: its load drifts
  over minutes, and a calm phase followed by an attacked one charged that drift to the attack.

The attack, started before each attacked measurement and stopped after it, from processes of
their own at nice 10 (each stands for a machine of its own, as the simulated devices do):
devices publishing heartbeats at QoS 0 as fast as they can (`--flooders` one after the other
over the ingest window, then a new one for each attacked deployment; each is quarantined,
which ends its session and keeps it out); a device sending malformed, oversized and
deeply nested payloads on every channel; a device publishing on other devices' topics; and a
device reconnecting (a full mTLS handshake) in a tight loop.

Figures (goal from the hardening issue: within 10 % of the calm run):
- attack.ingest_per_s: stored per second under attack, the calm window as baseline;
- attack.complete_s: the median deployment under attack, the calm one as baseline;
- attack.broker_cpu_share, attack.backend_cpu_share and attack.attacker_cpu_share: the host's
  CPU (all cores) used by the broker and by the backend over the calm and over the attacked
  measurements, and by the attacker
  processes, which would not be on this host;
- attack.hostile_messages and attack.reconnects: what the attackers sent (connections that
  completed their handshake).

`--attacker-cpus 1` splits the host in two machines: the attackers run on the CPUs named, and
everything else (broker, backend, database, store, simulated devices) on the others,
throughout. The attackers' own CPU then takes nothing from the fleet, as it would not from a real
fleet; what the attack still costs is the product's work on its traffic.

`--edge-limit` loads deploy/nftables/kernex-broker.nft (a per-source limit on new connections)
in front of the broker once the fleet is online; the reconnecting attacker connects from an
address of its own (127.0.0.2).

    .venv/bin/python bench/attack_benchmark.py [--devices 2000] [--heartbeat-s 5]
        [--update-devices 300] [--rounds 3] [--window-s 60] [--flooders 4] [--edge-limit]
        [--attacker-cpus 1] [--without flood|malformed|impostor|reconnector ...]
"""

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from fleet_benchmarks import wait_executions
from fleet_stack import FleetStack
from flood_benchmark import TMPFS, client_for, device_files, flood, tls_context_for
from results import Figure, record

from kernex_protocol.topics import Channel, topic_for

MALFORMED: list[tuple[Channel, bytes]] = [
    (Channel.HEARTBEAT, b'{"v":1,"seq":9223372036854775808,"session":1}'),
    (Channel.HEARTBEAT, b'{"v":1,"metrics":' + b"[" * 2000 + b"]" * 2000 + b"}"),
    (Channel.HEARTBEAT, b"x" * 20_000),
    (Channel.PRESENCE, b'{"v":true,"online":true,"session":5}'),
    (Channel.PROGRESS, b'{"v":1,"deployment_id":"d","state":"jumped","seq":1}'),
    (Channel.URL_REQUEST, b"\xff\xfe\x00"),
    (Channel.HEARTBEAT, b'{"v":99,"seq":1,"session":1,"sent_at":"t","uptime_s":1}'),
]


def malformed_message(device_id: str, count: int) -> tuple[str, bytes]:
    """Every malformed payload in turn, on the device's own topics."""
    channel, payload = MALFORMED[count % len(MALFORMED)]
    return topic_for(device_id, channel), payload


def impostor_message(_device_id: str, count: int) -> tuple[str, bytes]:
    """A heartbeat on another device's topic (the broker's ACL drops it)."""
    return topic_for(f"bench-{count % 1000 + 1:05d}", Channel.HEARTBEAT), b'{"v":1}'


MESSAGES = {"malformed": (malformed_message, 0.005), "impostor": (impostor_message, 0.002)}
# The reconnecting attacker connects from an address of its own (all of 127/8 is loopback), so a
# per-source limit at the edge (--edge-limit) can tell it from the simulated fleet.
ATTACKER_ADDRESS = "127.0.0.2"
EDGE_RULES = Path(__file__).resolve().parents[1] / "deploy" / "nftables" / "kernex-broker.nft"


def attacker_process(cpus: set[int] | None) -> None:
    """Make this process an attacker's: at nice 10, and on its own CPUs when the host is split
    (its children inherit both)."""
    os.nice(10)
    if cpus:
        os.sched_setaffinity(0, cpus)


def publisher(  # noqa: PLR0917 - a process target
    kind: str, device_id: str, folder: Path, port: int, seconds: float, sent: Any, cpus: Any
) -> None:
    """A process: publish the `kind` of hostile message in a loop, one every pause."""
    attacker_process(cpus)
    message, pause = MESSAGES[kind]
    client = client_for(device_id, folder, port)
    client.loop_start()
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        topic, payload = message(device_id, count)
        client.publish(topic, payload, qos=0)
        count += 1
        sent.value = count
        time.sleep(pause)
    client.loop_stop()
    client.disconnect()


def reconnector(  # noqa: PLR0917 - a process target
    device_id: str, folder: Path, port: int, seconds: float, sent: Any, cpus: Any
) -> None:
    """A process: connect (a full mTLS handshake, CONNECT) and drop the connection, in a loop.
    The TLS context is built once, as an attacker would: only the handshakes cost the broker."""
    attacker_process(cpus)
    context = tls_context_for(folder)
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        try:
            client = client_for(device_id, folder, port, context=context, source=ATTACKER_ADDRESS)
            client.loop(timeout=0.2)
            client.disconnect()
        except OSError:
            time.sleep(0.1)  # refused (by the edge limit, or quarantined), or the broker is busy
            continue
        count += 1
        sent.value = count


@contextlib.contextmanager
def edge_limit(port: int) -> Iterator[None]:
    """deploy/nftables/kernex-broker.nft in front of the broker's `port`, in a table of its own
    (needs nft and CAP_NET_ADMIN; scripts/bootstrap.sh installs nftables)."""
    table = f"kernex_bench_{os.getpid()}"
    text = EDGE_RULES.read_text().replace("kernex_broker", table)
    text = text.replace("define KERNEX_MQTT_PORT = 8883", f"define KERNEX_MQTT_PORT = {port}")
    subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False, capture_output=True)


def flooders(  # noqa: PLR0917 - a process target
    ids: list[str], root: Path, port: int, seconds: float, sent: list[Any], cpus: Any
) -> None:
    """A process: one flooder after another, each for its share of `seconds` (quarantine cuts
    each off at the broker long before). Each flooder sets its own nice level."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    share = seconds / len(ids)
    spawn = multiprocessing.get_context("spawn")
    for device_id, count in zip(ids, sent, strict=True):
        started = spawn.Value("d", 0.0)
        process = spawn.Process(
            target=flood, args=(device_id, root / "raw" / device_id, port, share, count, started)
        )
        process.start()
        process.join(share + 30)


def ingest_per_s(stack: FleetStack, seconds: float) -> float:
    """The simulated devices' heartbeats stored per second over the next `seconds`."""
    started = stack.sql("SELECT now()")[0][0]
    time.sleep(seconds)
    ended = stack.sql("SELECT now()")[0][0]
    stored = stack.sql(
        "SELECT count(*) FROM heartbeats WHERE device_id LIKE 'bench-%' "
        "AND received_at >= $1 AND received_at < $2",
        started,
        ended,
    )[0][0]
    return float(stored) / (ended - started).total_seconds()


def complete_s(stack: FleetStack, version: str, ids: list[str]) -> float:
    bundle = stack.upload(version, 64 * 1024)
    started = time.monotonic()
    deployment = stack.deploy(bundle, ids)
    wait_executions(stack, deployment, len(ids), ("succeeded",), timeout=900)
    return time.monotonic() - started


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds used by `process`, its finished children and its live descendants."""
    try:
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return 0.0
    return total


class Meter:
    """CPU seconds of the broker and the backend, and wall time, summed over the calm and over
    the attacked measurements."""

    def __init__(self, stack: FleetStack) -> None:
        processes = stack.processes()
        self.broker, self.backend = processes["broker"], processes["backend"]
        self.broker_s = {"calm": 0.0, "attacked": 0.0}
        self.backend_s = {"calm": 0.0, "attacked": 0.0}
        self.wall_s = {"calm": 0.0, "attacked": 0.0}

    @contextlib.contextmanager
    def measuring(self, kind: str) -> Iterator[None]:
        started = time.monotonic()
        broker, backend = cpu_s(self.broker), cpu_s(self.backend)
        yield
        self.wall_s[kind] += time.monotonic() - started
        self.broker_s[kind] += cpu_s(self.broker) - broker
        self.backend_s[kind] += cpu_s(self.backend) - backend

    def share(self, cpu_seconds: float, kind: str) -> float:
        """`cpu_seconds` as a share of the whole host (all cores) over the `kind` measurements."""
        return cpu_seconds / (self.wall_s[kind] * (os.cpu_count() or 1))


class Attack:
    """The attacker processes, started for each attacked measurement and stopped after it, so
    that calm and attacked measurements alternate and a drift of the host's load falls on both
    alike instead of on whichever phase came second."""

    def __init__(
        self,
        stack: FleetStack,
        others: dict[str, str],
        cpus: set[int] | None,
        without: frozenset[str] = frozenset(),
    ) -> None:
        """`without`: the kinds of attacker ("flood" or a name in `others`) left out."""
        self._stack = stack
        self._others = {name: device for name, device in others.items() if name not in without}
        self._flood = "flood" not in without
        self._cpus = cpus
        self._spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._running: list[tuple[Any, Any]] = []  # (process, its message counter)
        self.sent: dict[str, int] = dict.fromkeys([*others, "flood"], 0)
        self.cpu_s = 0.0

    def start(self, flooder_ids: list[str], flood_s: float) -> None:
        """Every attacker, with `flooder_ids` flooding one after another over `flood_s`."""
        stack, spawn = self._stack, self._spawn
        seconds = 3600.0  # until stopped
        for name, device_id in self._others.items():
            common = (device_id, stack.root / "raw" / device_id, stack.broker.port, seconds)
            counter = spawn.Value("q", 0)
            if name == "reconnector":
                process = spawn.Process(target=reconnector, args=(*common, counter, self._cpus))
            else:
                process = spawn.Process(target=publisher, args=(name, *common, counter, self._cpus))
            self._running.append((process, (name, [counter])))
        if self._flood:
            counts = [spawn.Value("q", 0) for _ in flooder_ids]
            process = spawn.Process(
                target=flooders,
                args=(flooder_ids, stack.root, stack.broker.port, flood_s, counts, self._cpus),
            )
            self._running.append((process, ("flood", counts)))
        for process, _ in self._running:
            process.start()
        time.sleep(2)  # connected and sending

    def stop(self) -> None:
        """Stop every attacker (a flooder's own process too), counting what they did."""
        for process, (name, counters) in self._running:
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(process.pid)
                self.cpu_s += cpu_s(tree)
                for child in tree.children(recursive=True):
                    child.kill()
            process.kill()
            process.join(30)
            self.sent[name] += sum(counter.value for counter in counters)
        self._running = []


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def against_calm(name: str, attacked: float, calm: float, unit: str, digits: int) -> Figure:
    """A figure of the attacked phase with the calm phase's as its baseline."""
    return Figure(
        name, round(attacked, digits), unit, round(calm, digits), round(attacked / calm, 2)
    )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--update-devices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="deployments per phase (median)")
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument(
        "--edge-limit",
        action="store_true",
        help="load deploy/nftables/kernex-broker.nft in front of the broker for the whole run",
    )
    parser.add_argument(
        "--attacker-cpus",
        type=lambda text: {int(cpu) for cpu in text.split(",")},
        help="run the attackers on these CPUs (comma-separated) and everything else on the rest",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=["flood", "malformed", "impostor", "reconnector"],
        help="leave this kind of attacker out (repeatable), to see what each costs",
    )
    parser.add_argument("--keep", type=Path, help="keep the run's files here")
    args = parser.parse_args()
    if 2 * args.rounds * args.update_devices > args.devices:
        parser.error("--devices must hold 2 x --rounds x --update-devices (each updated once)")
    args.fleet_cpus = os.sched_getaffinity(0) - (args.attacker_cpus or set())
    if not args.fleet_cpus:
        parser.error("--attacker-cpus must leave a CPU to the fleet")
    return args


def main() -> None:
    args = arguments()
    fleet_cpus = args.fleet_cpus
    # Everything started from here (the stack and the simulated devices) inherits this.
    os.sched_setaffinity(0, fleet_cpus)
    root = args.keep or Path(tempfile.mkdtemp(prefix="kernex-bench-attack-"))
    stack = FleetStack.with_quarantine(root)
    agent_state = Path(tempfile.mkdtemp(prefix="kernex-bench-agents-", dir=TMPFS))
    sim = None
    limits = contextlib.ExitStack()
    attacks = contextlib.ExitStack()  # stops the attackers if the run ends early
    try:
        stack.start()
        sim_ids = [f"bench-{i:05d}" for i in range(1, args.devices + 1)]
        # --flooders for the ingest window, then one for each attacked deployment.
        flooder_ids = [f"flooder-{i:03d}" for i in range(args.flooders + args.rounds)]
        others = {"malformed": "malformed-001", "impostor": "impostor-001"}
        others["reconnector"] = "reconnector-001"
        stack.register([*sim_ids, *flooder_ids, *others.values()])
        for device_id in [*flooder_ids, *others.values()]:
            device_files(stack, device_id)
        sim = stack.start_sim(
            args.devices, heartbeat_s=args.heartbeat_s, agent_state_dir=agent_state
        )
        stack.wait_online(args.devices, timeout=900)
        if args.edge_limit:  # for both phases, once the fleet is in (it limits its ramp too)
            limits.enter_context(edge_limit(stack.broker.port))
        time.sleep(2 * args.heartbeat_s)  # every device beating at its pace

        size = args.update_devices
        sets = [sim_ids[i * size : (i + 1) * size] for i in range(2 * args.rounds)]
        meter = Meter(stack)
        attack = Attack(stack, others, args.attacker_cpus, frozenset(args.without))
        attacks.callback(attack.stop)
        with meter.measuring("calm"):
            calm_ingest = ingest_per_s(stack, args.window_s)
        attack.start(flooder_ids[: args.flooders], args.window_s)
        with meter.measuring("attacked"):
            attacked_ingest = ingest_per_s(stack, args.window_s)
        attack.stop()
        calm: list[float] = []
        attacked: list[float] = []
        for i in range(args.rounds):
            with meter.measuring("calm"):
                calm.append(complete_s(stack, f"2.0.{i}", sets[2 * i]))
            attack.start([flooder_ids[args.flooders + i]], args.window_s)
            with meter.measuring("attacked"):
                attacked.append(complete_s(stack, f"3.0.{i}", sets[2 * i + 1]))
            attack.stop()
        quarantined = stack.sql(
            "SELECT count(DISTINCT object_id) FROM audit_events WHERE action = 'device.quarantine'"
        )[0][0]
        sent = attack.sent
        hostile = sent["flood"] + sent["malformed"] + sent["impostor"]
        figures = [
            against_calm("attack.ingest_per_s", attacked_ingest, calm_ingest, "/s", 1),
            against_calm(
                "attack.complete_s", statistics.median(attacked), statistics.median(calm), "s", 1
            ),
            against_calm(
                "attack.broker_cpu_share",
                meter.share(meter.broker_s["attacked"], "attacked"),
                meter.share(meter.broker_s["calm"], "calm"),
                "of the host",
                3,
            ),
            against_calm(
                "attack.backend_cpu_share",
                meter.share(meter.backend_s["attacked"], "attacked"),
                meter.share(meter.backend_s["calm"], "calm"),
                "of the host",
                3,
            ),
            Figure(
                "attack.attacker_cpu_share",
                round(meter.share(attack.cpu_s, "attacked"), 3),
                "of the host",
            ),
            Figure("attack.hostile_messages", hostile, "messages"),
            Figure("attack.reconnects", sent["reconnector"], "connections"),
            Figure("attack.quarantined_devices", quarantined, "devices"),
        ]
        notes = [
            f"{args.devices} simulated devices (heartbeat every {args.heartbeat_s:.0f} s); "
            f"ingest over a calm {args.window_s:.0f} s window, then an attacked one; complete: "
            f"{args.rounds} deployments of a 64 KiB bundle to {size} devices each (a different "
            "set each time), calm and attacked in turn, the attackers started before each "
            "attacked one and stopped after it; medians. The attack: flooders one after another "
            f"({sent['flood']} messages), malformed payloads ({sent['malformed']}), another "
            f"device's topics ({sent['impostor']}), and {sent['reconnector']} reconnections; "
            "the baseline of each figure is the calm measurement.",
            "complete, seconds per deployment in turn (calm / attacked): "
            + "; ".join(f"{c:.1f} / {a:.1f}" for c, a in zip(calm, attacked, strict=True))
            + ".",
            (
                "deploy/nftables/kernex-broker.nft in front of the broker throughout "
                "(a burst of 100 new connections, then 20 a second, per source address)."
                if args.edge_limit
                else "No limit in front of the broker (Mosquitto alone)."
            ),
            "CPU shares are of the whole host (all cores) over the calm and over the attacked "
            "measurements: the broker's, the backend's, and the attacker processes' (each "
            "stands for a machine of its own, at nice 10, but runs on this host).",
            (
                f"The host split in two: the attackers on CPU {cpu_list(args.attacker_cpus)}, "
                f"everything else on CPU {cpu_list(fleet_cpus)}, throughout."
                if args.attacker_cpus
                else "No split: the attackers share every CPU with the fleet."
            ),
        ]
    finally:
        attacks.close()
        limits.close()
        if sim is not None:
            sim.send_signal(2)
            sim.wait(300)
        stack.stop()
        shutil.rmtree(agent_state, ignore_errors=True)
    command = (
        f".venv/bin/python bench/attack_benchmark.py --devices {args.devices} "
        f"--heartbeat-s {args.heartbeat_s:.0f} --update-devices {args.update_devices} "
        f"--rounds {args.rounds} --window-s {args.window_s:.0f} --flooders {args.flooders}"
        + (" --edge-limit" if args.edge_limit else "")
        + (f" --attacker-cpus {cpu_list(args.attacker_cpus)}" if args.attacker_cpus else "")
        + "".join(f" --without {name}" for name in args.without)
    )
    title = (
        f"Attack: hostile devices against {args.devices} devices"
        + (", connections limited at the edge" if args.edge_limit else "")
        + (", attackers on CPUs of their own" if args.attacker_cpus else "")
        + (f", without {' and '.join(args.without)}" if args.without else "")
    )
    record(title, command, figures, notes)


if __name__ == "__main__":
    main()
