"""Heartbeat load for the ingest benchmark: processes of device connections (real certificates,
real mTLS, the agent's own transport on the simulator's shared network) that publish valid
heartbeats at a rate the parent sets and changes while they run.

Each heartbeat carries its send time in milliseconds as the metric `sent_ms`, so whoever
receives it (a bare subscriber, or the backend's stored row) can tell its lag.
"""

import datetime as dt
import multiprocessing
import multiprocessing.synchronize
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernex_agent.config import MqttConfig
from kernex_agent.counter import PersistentCounter
from kernex_agent.transport import MqttTransport
from kernex_protocol.payloads import Heartbeat, Presence
from kernex_protocol.topics import Channel
from kernex_sim.fleet import ensure_certificates
from kernex_sim.network import SharedNetwork

if TYPE_CHECKING:
    from fleet_stack import FleetStack

TICK_S = 0.01


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load process: its devices and where their files are."""

    device_ids: list[str]
    certificates: str  # folder with <id>/device.crt and device.key
    ca_chain: str
    port: int
    state: str


def _publish_loop(
    spec: LoadSpec,
    rate: Any,  # multiprocessing.Value('d'): messages per second for this process
    published: Any,  # multiprocessing.Value('q'): running count
    connected: Any,  # multiprocessing.Value('i')
    stop: multiprocessing.synchronize.Event,
) -> None:
    network = SharedNetwork(name="load-network")
    transports = []
    for device_id in spec.device_ids:
        home = Path(spec.certificates) / device_id
        state = Path(spec.state) / device_id
        state.mkdir(parents=True, exist_ok=True)
        transport = MqttTransport(
            MqttConfig(
                host="localhost",
                port=spec.port,
                ca_file=Path(spec.ca_chain),
                cert_file=home / "device.crt",
                key_file=home / "device.key",
            ),
            device_id,
            sessions=PersistentCounter(state / "session"),
            birth=lambda session: Presence(online=True, session=session),
            on_message=lambda channel, payload: None,
            network=network,
        )
        transport.start()
        transports.append(transport)
    while sum(t.connected.is_set() for t in transports) < len(transports) and not stop.is_set():
        connected.value = sum(t.connected.is_set() for t in transports)
        time.sleep(0.2)
    connected.value = len(transports)
    seqs = [0] * len(transports)
    started = time.monotonic()
    credit = 0.0
    turn = 0
    last = started
    while not stop.is_set():
        now = time.monotonic()
        credit += rate.value * (now - last)
        last = now
        sent_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        count = 0
        while credit >= 1.0:
            index = turn % len(transports)
            turn += 1
            transport = transports[index]
            beat = Heartbeat(
                seq=seqs[index],
                session=transport.session,
                sent_at=sent_at,
                uptime_s=int(now - started),
                agent_version="bench-load",
                metrics={"sent_ms": int(time.time() * 1000)},
            )
            seqs[index] += 1
            transport.publish(Channel.HEARTBEAT, beat.to_payload())
            credit -= 1.0
            count += 1
        if rate.value == 0:
            credit = 0.0
        with published.get_lock():
            published.value += count
        time.sleep(TICK_S)
    for transport in transports:
        transport.stop(timeout=2.0)
    network.close()


class HeartbeatLoad:
    """Start with `start()`; `set_rate()` any time; `published()`; `stop()`."""

    def __init__(self, specs: list[LoadSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._rates = [context.Value("d", 0.0) for _ in specs]
        self._published = [context.Value("q", 0) for _ in specs]
        self._connected = [context.Value("i", 0) for _ in specs]
        self._processes = [
            context.Process(
                target=_publish_loop,
                args=(spec, rate, published, connected, self._stop),
                daemon=True,
            )
            for spec, rate, published, connected in zip(
                specs, self._rates, self._published, self._connected, strict=True
            )
        ]
        self.devices = sum(len(s.device_ids) for s in specs)

    def start(self, timeout: float = 120.0) -> None:
        for process in self._processes:
            process.start()
        deadline = time.monotonic() + timeout
        while sum(c.value for c in self._connected) < self.devices:
            if time.monotonic() > deadline:
                raise RuntimeError("the load's devices did not all connect")
            time.sleep(0.2)

    def set_rate(self, per_s: float) -> None:
        for rate in self._rates:
            rate.value = per_s / len(self._rates)

    def published(self) -> int:
        return sum(p.value for p in self._published)

    def stop(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(30)
            if process.is_alive():
                process.kill()


def start_load(
    stack: "FleetStack", devices: int, processes: int
) -> tuple[list[str], HeartbeatLoad]:
    """Register `devices` load devices on `stack`, issue their certificates, and start their
    connections in `processes` processes (at rate 0): their ids and the load."""
    root = stack.root
    ids = [f"load-{i:05d}" for i in range(1, devices + 1)]
    stack.register(ids)
    ensure_certificates(stack.broker.authority, root / "load-certs", ids)
    load = HeartbeatLoad(
        [
            LoadSpec(
                device_ids=ids[i::processes],
                certificates=str(root / "load-certs"),
                ca_chain=str(stack.broker.service_dir / "ca-chain.pem"),
                port=stack.broker.port,
                state=str(root / "load-state"),
            )
            for i in range(processes)
        ]
    )
    load.start()
    return ids, load
