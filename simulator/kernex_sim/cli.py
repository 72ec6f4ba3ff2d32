"""`kernex-sim run`: a fleet of simulated devices against a real broker and backend.

    kernex-sim run --ca ca --ca-chain ca-chain.pem --release-keys release-keys --product app \\
        --broker-host mqtt.example.com --broker-port 8883 --devices 1000 --processes 4 \\
        --register https://kernex.example/api/v1 --api-key-file key.txt --duration 600

Certificates are issued in bulk from the CA directory and cached under --state-dir, so a second
run starts at once. Devices are spread over processes (each process holds at most a few
thousand connections, well under its open-file limit), started at --ramp devices per second,
and report once a second; the parent prints the connection ramp, messages sent and per-state
counts, and writes a JSON summary.
"""

import argparse
import json
import multiprocessing
import os
import queue
import signal
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernex_provision.authority import CertificateAuthority
from kernex_sim.fleet import (
    Faults,
    WorkerSpec,
    deal_faults,
    describe,
    device_ids,
    ensure_certificates,
    save_plan,
    split,
)
from kernex_sim.worker import worker_main

# A process may hold 20000 open files here. Each device holds its connection, and while it
# updates a download socket and file; the rest is headroom.
MAX_DEVICES_PER_PROCESS = 4000
DEVICES_PER_PROCESS = 2000  # the default split: one event loop carries this many comfortably


def register(api: str, token: str, ids: list[str], device_type: str) -> int:
    """Create the devices through the API (existing ones are left alone); returns how many."""

    def create(device_id: str) -> bool:
        body = json.dumps({"id": device_id, "device_type": device_type}).encode()
        request = urllib.request.Request(  # noqa: S310 - an operator-given API URL
            f"{api.rstrip('/')}/devices",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30):  # noqa: S310
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                return False
            raise

    with ThreadPoolExecutor(max_workers=16) as pool:
        return sum(pool.map(create, ids))


def _say(text: str) -> None:
    print(text, flush=True)  # a CLI reporting to its user


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernex-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a simulated fleet")
    run.add_argument(
        "--ca", type=Path, required=True, help="CA directory (kernex-provision init-ca)"
    )
    run.add_argument("--ca-chain", type=Path, required=True, help="CAs of the broker's certificate")
    run.add_argument("--release-keys", type=Path, required=True, help="trusted release *.pub")
    run.add_argument(
        "--notice-keys",
        type=Path,
        help="the backend's notice *.pub (default: the CA directory's notice-keys/)",
    )
    run.add_argument(
        "--product",
        action="append",
        help="release name the devices run (repeat for several; default: app)",
    )
    run.add_argument("--broker-host", default="localhost")
    run.add_argument("--broker-port", type=int, default=8883)
    run.add_argument("--devices", type=int, default=100)
    run.add_argument("--processes", type=int, default=0, help="default: 1 per 2000 devices")
    run.add_argument("--prefix", default="sim")
    run.add_argument("--device-type", default="sim-board")
    run.add_argument("--heartbeat-s", type=float, default=30.0)
    run.add_argument("--heartbeat-padding", type=int, default=0, help="extra metrics per beat")
    run.add_argument("--ramp", type=float, default=500.0, help="connection starts per second")
    run.add_argument("--duration", type=float, default=0.0, help="seconds; 0 runs until Ctrl-C")
    run.add_argument("--state-dir", type=Path, default=Path(".kernex/sim"))
    run.add_argument(
        "--agent-state-dir", type=Path, help="agents' state elsewhere, e.g. on a tmpfs (/dev/shm)"
    )
    run.add_argument("--register", metavar="API_URL", help="create the devices through the API")
    run.add_argument("--api-key-file", type=Path, help="file holding the API key for --register")
    run.add_argument("--summary", type=Path, help="write the final summary (JSON) here")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0..19",
        help="run at a lower CPU priority: when rehearsing on the backend's own host, the "
        "devices simulated here would each be a machine of their own, not a share of it",
    )
    for name in ("fail-install", "fail-health", "slow-download", "reboot-mid-update", "offline"):
        run.add_argument(f"--{name}", type=float, default=0.0, help="share of devices, 0..1")
    run.add_argument("--offline-every-s", type=float, default=120.0)
    run.add_argument("--offline-for-s", type=float, default=30.0)
    run.add_argument("--slow-download-bps", type=int, default=64 * 1024)
    run.add_argument(
        "--bad-version",
        help="install and health failures strike only this version (a bad release): the "
        "devices dealt them install every other version cleanly",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Plan, start the workers, report, and summarise."""
    if args.nice:
        os.nice(args.nice)  # the workers inherit it
    ids = device_ids(args.prefix, args.devices)
    certs = args.state_dir / "devices"
    began = time.monotonic()
    ensure_certificates(CertificateAuthority(args.ca), certs, ids)
    _say(f"sim: {len(ids)} device certificates ready in {time.monotonic() - began:.1f} s")
    if args.register:
        token = args.api_key_file.read_text().strip() if args.api_key_file else ""
        created = register(args.register, token, ids, args.device_type)
        _say(f"sim: registered {created} new devices ({len(ids) - created} existed)")
    faults = Faults(
        fail_install=args.fail_install,
        fail_health=args.fail_health,
        slow_download=args.slow_download,
        slow_download_bps=args.slow_download_bps,
        reboot_mid_update=args.reboot_mid_update,
        offline=args.offline,
        offline_every_s=args.offline_every_s,
        offline_for_s=args.offline_for_s,
        bad_version=args.bad_version,
    )
    devices = deal_faults(ids, certs, faults, args.seed)
    save_plan(args.state_dir / "plan.json", devices)
    _say(f"sim: faults dealt: {describe(devices)}")
    processes = args.processes or max(1, -(-len(ids) // DEVICES_PER_PROCESS))
    if -(-len(ids) // processes) > MAX_DEVICES_PER_PROCESS:
        _say(f"sim: more than {MAX_DEVICES_PER_PROCESS} devices per process; use --processes")
        return 2
    context = multiprocessing.get_context("spawn")
    reports: Any = context.Queue()
    stop = context.Event()
    specs = [
        WorkerSpec(
            index=i,
            devices=slice_,
            broker_host=args.broker_host,
            broker_port=args.broker_port,
            ca_chain=str(args.ca_chain.resolve()),
            trusted_keys_dir=str(args.release_keys.resolve()),
            notice_keys_dir=str((args.notice_keys or args.ca / "notice-keys").resolve()),
            products=tuple(args.product or ["app"]),
            device_type=args.device_type,
            heartbeat_s=args.heartbeat_s,
            heartbeat_padding=args.heartbeat_padding,
            ramp_per_s=args.ramp / processes,
            faults=faults,
            agent_state_root=str(args.agent_state_dir) if args.agent_state_dir else None,
        )
        for i, slice_ in enumerate(split(devices, processes))
    ]
    workers = [context.Process(target=worker_main, args=(s, reports, stop)) for s in specs]
    for worker in workers:
        worker.start()
    summary = _watch(reports, stop, len(ids), len(workers), args.duration)
    for worker in workers:
        worker.join(60)
        if worker.is_alive():
            worker.kill()
    summary["faults"] = describe(devices)
    _say("sim: " + json.dumps(summary, sort_keys=True))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def _watch(reports: Any, stop: Any, total: int, workers: int, duration: float) -> dict[str, Any]:
    """Collect reports until the duration ends or SIGINT/SIGTERM; track the connection ramp."""
    interrupted = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    latest: dict[int, dict[str, Any]] = {}
    ramp: dict[str, float] = {}
    started = time.monotonic()
    last_print = 0.0
    done: set[int] = set()
    while len(done) < workers:
        elapsed = time.monotonic() - started
        if not stop.is_set() and (interrupted or (duration and elapsed >= duration)):
            stop.set()
        try:
            report = reports.get(timeout=0.5)
        except queue.Empty:
            continue
        latest[report["worker"]] = report
        if report.get("done"):
            done.add(report["worker"])
            continue
        connected = sum(r["connected"] for r in latest.values())
        for share in (0.5, 0.95, 1.0):
            key = f"connected_{int(share * 100)}pct_s"
            if key not in ramp and connected >= share * total:
                ramp[key] = round(elapsed, 2)
        if elapsed - last_print >= 5:
            last_print = elapsed
            sent = _sum_sent(latest)
            finals = {k[6:]: v for k, v in sent.items() if k.startswith("final.")}
            _say(
                f"sim: t={elapsed:.0f}s connected {connected}/{total} "
                f"heartbeats {sent.get('heartbeat', 0)} progress {sent.get('progress', 0)} "
                f"final {finals}"
            )
    sent = _sum_sent(latest)
    return {
        "devices": total,
        "connected_at_end": sum(r["connected"] for r in latest.values()),
        "ramp": ramp,
        "sent": sent,
        "final_states": {k[6:]: v for k, v in sent.items() if k.startswith("final.")},
        "reboots": sum(r["reboots"] for r in latest.values()),
        "outages": sum(r["outages"] for r in latest.values()),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _sum_sent(latest: dict[int, dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in latest.values():
        for key, value in report["sent"].items():
            total[key] = total.get(key, 0) + value
    return total


if __name__ == "__main__":
    sys.exit(main())
