"""One simulator process: runs its slice of devices, each a real `Agent` with its own
certificate and mTLS connection, and reports counts to the parent once a second. All the
slice's connections share one network thread (`SharedNetwork`), all its agents one event loop.

Everything but the installer is the agent's own code: transport, presence, heartbeats, notice
checks, the downloader (real HTTP to the real object store), the state machine with its saved
record. Faults are played by the supervisor around each agent: a simulated reboot (the agent's
power-cut hook, then a new agent on the same state, which resumes), or going offline for a
while (the agent stops and a new one starts later).
"""

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing.queues
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kernex_agent.agent import Agent
from kernex_agent.config import (
    AgentConfig,
    LogConfig,
    MqttConfig,
    ReleaseConfig,
    TelemetryConfig,
    UpdateConfig,
)
from kernex_agent.faults import CrashOnce
from kernex_agent.update.machine import State
from kernex_sim.fleet import SimDevice, WorkerSpec
from kernex_sim.installer import SimulatedInstaller
from kernex_sim.network import SharedNetwork


class SimulatedReboot(BaseException):
    """Raised by the power-cut hook: the supervisor starts the device again.

    A BaseException, like SystemExit: it stands for the process dying, so the agent's own
    error handling (which turns an Exception in a state into that state's failure) must not
    catch it."""


def _config(spec: WorkerSpec, device: SimDevice) -> AgentConfig:
    home = Path(device.home)
    state = Path(spec.agent_state_root) / device.device_id if spec.agent_state_root else home
    return AgentConfig(
        device_id=device.device_id,
        device_type=spec.device_type,
        mqtt=MqttConfig(
            host=spec.broker_host,
            port=spec.broker_port,
            ca_file=Path(spec.ca_chain),
            cert_file=home / "device.crt",
            key_file=home / "device.key",
            reconnect_min_s=1.0,
            reconnect_max_s=30.0,
        ),
        release=ReleaseConfig(
            trusted_keys_dir=Path(spec.trusted_keys_dir),
            notice_keys_dir=Path(spec.notice_keys_dir),
        ),
        telemetry=TelemetryConfig(heartbeat_interval_s=spec.heartbeat_s, start_jitter=True),
        update=UpdateConfig(
            state_dir=state / "state",
            install_root=state / "app",
            products=spec.products,
            reserve_bytes=0,
            download_rate_limit_bps=(spec.faults.slow_download_bps if device.slow_download else 0),
            retry_min_s=1.0,
            retry_max_s=10.0,
        ),
        log=LogConfig(level="WARNING"),
    )


class Supervisor:
    """Keeps one simulated device running through its faults."""

    def __init__(self, spec: WorkerSpec, device: SimDevice, network: SharedNetwork) -> None:
        self.spec = spec
        self.device = device
        self.network = network
        self.agent: Agent | None = None
        self.reboots = 0
        self.outages = 0
        self.sent: Counter[str] = Counter()  # of agents that ended (reboots, outages)

    def _new_agent(self) -> Agent:
        def crash(state: State) -> None:
            raise SimulatedReboot(state.value)

        config = _config(self.spec, self.device)
        bad_version = self.spec.faults.bad_version
        installer = SimulatedInstaller(
            config.update.state_dir, fail=self.device.fail_install, only_version=bad_version
        )

        def healthy() -> bool:
            # Checked once the new version runs: a bad version fails it on this device.
            return not (
                self.device.fail_health and bad_version in (None, installer.current_version())
            )

        agent = Agent(
            config,
            installer=installer,
            health_check=healthy,
            faults=(
                CrashOnce(State.INSTALLING, config.update.state_dir, crash=crash)
                if self.device.reboot_mid_update
                else None
            ),
            network=self.network,
        )
        agent.extra_metrics = {f"pad{i:02d}": i for i in range(self.spec.heartbeat_padding)}
        return agent

    def counts(self) -> Counter[str]:
        """What this device sent over all its agents."""
        total = Counter(self.sent)
        if self.agent is not None:
            total.update(self.agent.sent)
        return total

    def connected(self) -> bool:
        return self.agent is not None and self.agent.transport.connected.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run the device until `stop`, playing its faults."""
        rng = random.Random(self.device.device_id)  # noqa: S311 - simulation
        while not stop.is_set():
            self.agent = self._new_agent()
            until = asyncio.Event()
            outage = None
            if self.device.offline:
                outage = asyncio.get_running_loop().call_later(
                    rng.uniform(0.5, 1.5) * self.spec.faults.offline_every_s, until.set
                )
            watcher = asyncio.create_task(_relay(stop, until))
            await self.agent.run(until)
            watcher.cancel()
            if outage is not None:
                outage.cancel()
            self.sent.update(self.agent.sent)
            self.agent = None  # its counts are in self.sent now: not counted twice
            if stop.is_set():
                return
            if until.is_set():  # a planned outage
                self.outages += 1
                await _sleep_unless(stop, self.spec.faults.offline_for_s)
            else:  # the agent ended by itself: the simulated power cut
                self.reboots += 1
                await _sleep_unless(stop, 1.0)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_worker(
    spec: WorkerSpec, reports: "multiprocessing.queues.Queue[Any]", stop: Any
) -> None:
    """Start the slice at the ramp rate, report once a second, stop when told."""
    # Each agent runs its downloads, hashing and installs in worker threads; a real device has
    # the default pool to itself, a simulator process shares it between hundreds of agents.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="sim-work")
    )
    stopping = asyncio.Event()
    network = SharedNetwork(name=f"sim-network-{spec.index}")
    supervisors = [Supervisor(spec, device, network) for device in spec.devices]
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()

    async def start_all() -> None:
        for index, supervisor in enumerate(supervisors):
            due = started + index / spec.ramp_per_s
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stopping.is_set():
                return
            tasks.append(asyncio.create_task(supervisor.run(stopping)))

    def report() -> dict[str, Any]:
        totals: Counter[str] = Counter()
        for supervisor in supervisors:
            totals.update(supervisor.counts())
        return {
            "worker": spec.index,
            "devices": len(supervisors),
            "started": len(tasks),
            "connected": sum(s.connected() for s in supervisors),
            "reboots": sum(s.reboots for s in supervisors),
            "outages": sum(s.outages for s in supervisors),
            "sent": dict(totals),
        }

    starter = asyncio.create_task(start_all())
    while not stop.is_set():
        reports.put(report())
        await asyncio.sleep(spec.report_s)
    connected = report()["connected"]
    stopping.set()
    starter.cancel()
    await asyncio.gather(starter, *tasks, return_exceptions=True)
    network.close()
    # The last word: everything sent up to the very end (the periodic reports can be up to
    # a report interval behind), and how many were connected when told to stop.
    reports.put({**report(), "connected": connected, "done": True})


def worker_main(spec: WorkerSpec, reports: "multiprocessing.queues.Queue[Any]", stop: Any) -> None:
    """Entry point of a worker process."""
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run_worker(spec, reports, stop))
