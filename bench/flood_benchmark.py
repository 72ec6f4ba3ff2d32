"""One device floods while the fleet runs: does anyone else notice?

The whole product on this machine (fleet_stack.py), with the backend allowed to write the
broker's ACL (so quarantine cuts a device off for real). `--devices` simulated devices run the
real agent with their usual 30 s heartbeats; `--victims` more devices, driven here, send a
heartbeat every second with an exact send time and ask for a download URL every few seconds;
one flooding device publishes heartbeats at QoS 0 as fast as one process can for `--flood-s`
(at nice 10, like the simulator: each stands for a machine of its own).

Figures (goals from issue 13):
- flood.victim_heartbeat_delay_p99_s: broker-to-backend delay of the victims' heartbeats while
  the flood runs (receive time in the database minus send time), goal <= 2;
- flood.victim_heartbeats_lost: victim heartbeats sent during the flood and never stored, goal 0;
- flood.url_answer_p99_s: url/request to url/response at a victim, during the flood, goal <= 1;
- flood.api_list_p99_ms, against the same requests before the flood (the baseline);
- flood.flooder_sent and flood.quarantined_after_s: what the flooder sent, and when it was cut off.
"""

import argparse
import datetime as dt
import multiprocessing
import os
import shutil
import ssl
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from fleet_stack import FleetStack
from paho.mqtt.enums import CallbackAPIVersion
from results import Figure, record

from kernex_protocol.payloads import Heartbeat, UrlRequest
from kernex_protocol.topics import Channel, topic_for
from kernex_provision.authority import pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key

TMPFS = "/dev/shm" if Path("/dev/shm").is_dir() else None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def device_files(stack: FleetStack, device_id: str) -> Path:
    folder = stack.root / "raw" / device_id
    folder.mkdir(parents=True)
    key = new_key()
    authority = stack.broker.authority
    cert = authority.issue(
        key.public_key(), kind=CertificateKind.DEVICE, common_name=device_id, days=2
    )
    write_private_key(folder / "device.key", key)
    write_public(folder / "device.crt", pem(cert))
    write_public(folder / "ca.pem", authority.chain_pem)
    return folder


def tls_context_for(folder: Path) -> ssl.SSLContext:
    """The TLS context of the device whose files are in `folder`."""
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.load_cert_chain(str(folder / "device.crt"), str(folder / "device.key"))
    return context


def client_for(
    device_id: str,
    folder: Path,
    port: int,
    *,
    context: ssl.SSLContext | None = None,
    source: str = "",
) -> mqtt.Client:
    """A connected client of the device whose files are in `folder` (from the local address
    `source`, if given)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
    client.tls_set_context(context or tls_context_for(folder))
    client.connect("127.0.0.1" if source else "localhost", port, keepalive=60, bind_address=source)
    return client


def flood(  # noqa: PLR0917 - a process target
    device_id: str, folder: Path, port: int, seconds: float, sent: Any, started: Any
) -> None:
    """A separate process: publish heartbeats at QoS 0 as fast as paho can for `seconds`;
    `started` gets the wall time of its first message. It runs at nice 10, as the simulated
    devices do: it stands for a machine of its own, not for a process sharing the backend's
    two cores (on which it would measure the CPU contention of this host, not the product)."""
    os.nice(10)
    client = client_for(device_id, folder, port)
    client.loop_start()
    time.sleep(1)
    topic = topic_for(device_id, Channel.HEARTBEAT)
    payload = Heartbeat(1, 1, "t", 1, "0.1.0").to_payload()
    end = time.monotonic() + seconds
    started.value = time.time()
    count = 0
    while time.monotonic() < end:
        for _ in range(100):
            if client.publish(topic, payload, qos=0).rc != mqtt.MQTT_ERR_SUCCESS:
                # Disconnected (quarantined): paho reconnects in the background; spinning here
                # would only burn this host's CPU, which an attacker's own machine would not.
                time.sleep(0.05)
                break
            count += 1
        sent.value = count
        time.sleep(0)  # let the network thread write
    client.loop_stop()
    client.disconnect()


class Victims:
    """Devices driven here: a heartbeat a second each, a URL request every few seconds."""

    def __init__(self, stack: FleetStack, ids: list[str]) -> None:
        self.ids = ids
        self.clients: list[mqtt.Client] = []
        self.pending: dict[str, tuple[float, float]] = {}  # request: (monotonic, wall) sent
        self.answers: list[tuple[float, float]] = []  # (wall time sent, seconds to answer)
        self.sent: list[tuple[str, int, float]] = []  # (device, seq, time)
        self.deployment_id = ""
        lock = threading.Lock()

        def answered(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
            at = time.monotonic()
            request_id = message.payload.split(b'"request_id":"')[1].split(b'"')[0].decode()
            with lock:
                started = self.pending.pop(request_id, None)
            if started is not None:
                self.answers.append((started[1], at - started[0]))

        for device_id in ids:
            client = client_for(device_id, device_files(stack, device_id), stack.broker.port)
            client.on_message = answered
            client.subscribe(topic_for(device_id, Channel.URL_RESPONSE), qos=1)
            client.loop_start()
            self.clients.append(client)
        self._lock = lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.wait(1.0):
            seq += 1
            for device_id, client in zip(self.ids, self.clients, strict=True):
                now = time.time()
                sent_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
                beat = Heartbeat(seq, 1, sent_at, seq, "0.1.0").to_payload()
                client.publish(topic_for(device_id, Channel.HEARTBEAT), beat, qos=0)
                self.sent.append((device_id, seq, now))
                if seq % 4 == 0 and self.deployment_id:
                    request_id = uuid.uuid4().hex[:16]
                    with self._lock:
                        self.pending[request_id] = (time.monotonic(), time.time())
                    request = UrlRequest(request_id, self.deployment_id).to_payload()
                    client.publish(topic_for(device_id, Channel.URL_REQUEST), request, qos=1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def api_p99_ms(stack: FleetStack, requests: int) -> float:
    samples = []
    with stack.client() as api:
        for _ in range(requests):
            started = time.perf_counter()
            api.get("/devices", params={"limit": 100}).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
    return round(percentile(samples, 99), 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--victims", type=int, default=20)
    parser.add_argument("--flood-s", type=float, default=60.0)
    parser.add_argument("--api-requests", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="keep the run's files here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="kernex-bench-flood-"))
    stack = FleetStack.with_quarantine(root)
    agent_state = Path(tempfile.mkdtemp(prefix="kernex-bench-agents-", dir=TMPFS))
    sim = None
    victims: Victims | None = None
    figures: list[Figure] = []
    notes: list[str] = []
    try:
        stack.start()
        sim_ids = [f"bench-{i:05d}" for i in range(1, args.devices + 1)]
        victim_ids = [f"victim-{i:03d}" for i in range(args.victims)]
        flooder_id = "flooder-001"
        stack.register([*sim_ids, *victim_ids, flooder_id])
        sim = stack.start_sim(args.devices, agent_state_dir=agent_state)
        stack.wait_online(args.devices, timeout=600)
        victims = Victims(stack, victim_ids)
        bundle = stack.upload("2.0.0", 4096)
        victims.deployment_id = stack.deploy(bundle, victim_ids)
        victims.start()
        time.sleep(5)
        api_before = api_p99_ms(stack, args.api_requests)

        folder = device_files(stack, flooder_id)
        spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
        sent = spawn.Value("q", 0)
        started = spawn.Value("d", 0.0)
        flooder = spawn.Process(
            target=flood,
            args=(flooder_id, folder, stack.broker.port, args.flood_s, sent, started),
        )
        flooder.start()
        while not started.value:
            time.sleep(0.05)
        flood_started = started.value
        api_during = api_p99_ms(stack, args.api_requests)
        flooder.join(args.flood_s + 60)
        flood_ended = time.time()
        time.sleep(5)  # what was in flight lands
        victims.stop()

        during = [s for s in victims.sent if flood_started <= s[2] <= flood_ended]
        stored = {
            (row["device_id"], row["sequence"]): row
            for row in stack.sql(
                "SELECT device_id, sequence, received_at, metrics->>'sent_at' AS sent_at "
                "FROM heartbeats WHERE device_id LIKE 'victim-%'"
            )
        }
        delays = []
        lost = 0
        for device_id, seq, _ in during:
            row = stored.get((device_id, seq))
            if row is None:
                lost += 1
                continue
            sent_at = dt.datetime.fromisoformat(row["sent_at"])
            delays.append((row["received_at"] - sent_at).total_seconds())
        answers = [took for at, took in victims.answers if flood_started <= at <= flood_ended]
        quarantined = stack.sql(
            "SELECT at FROM audit_events WHERE action = 'device.quarantine' AND object_id = $1",
            flooder_id,
        )
        quarantined_after = (
            round(quarantined[0]["at"].timestamp() - flood_started, 2) if quarantined else -1.0
        )
        figures = [
            Figure("flood.victim_heartbeat_delay_p99_s", round(percentile(delays, 99), 3), "s"),
            Figure("flood.victim_heartbeat_delay_p50_s", round(statistics.median(delays), 3), "s"),
            Figure("flood.victim_heartbeats_lost", lost, "heartbeats"),
            Figure("flood.url_answer_p99_s", round(percentile(answers, 99), 3), "s"),
            Figure(
                "flood.api_list_p99_ms",
                api_during,
                "ms",
                baseline=api_before,
                ratio=round(api_during / api_before, 2) if api_before else None,
            ),
            Figure("flood.flooder_sent", sent.value, "messages"),
            Figure("flood.quarantined_after_s", quarantined_after, "s"),
        ]
        notes.append(
            f"{args.devices} simulated devices (30 s heartbeats) and {args.victims} victims "
            f"(a heartbeat a second with its exact send time, a URL request every 4 s) while "
            f"one device published {sent.value} QoS 0 heartbeats in {args.flood_s:.0f} s; "
            f"{len(during)} victim heartbeats were sent during the flood, {len(delays)} stored."
        )
        notes.append(
            "Delay is the backend's receive time (stored with the row) minus the send time; "
            "the API baseline is the same requests just before the flood."
        )
    finally:
        if victims is not None and victims._thread.is_alive():
            victims.stop()
        if sim is not None:
            sim.send_signal(2)
            sim.wait(300)
        stack.stop()
        shutil.rmtree(agent_state, ignore_errors=True)
    command = (
        f".venv/bin/python bench/flood_benchmark.py --devices {args.devices} "
        f"--victims {args.victims} --flood-s {args.flood_s:.0f}"
    )
    record(f"Flood: one device against {args.devices} devices", command, figures, notes)


if __name__ == "__main__":
    main()
