"""`kernex-agent --config /etc/kernex/agent.toml`: run the agent until SIGTERM or SIGINT."""

import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from kernex_agent import liveness, logs
from kernex_agent.agent import AGENT_VERSION, Agent
from kernex_agent.config import AgentConfig, ConfigError, load_config
from kernex_agent.faults import CrashOnce
from kernex_agent.self_update import RESTART_EXIT_CODE, connect_probe, execute_from, launch_target
from kernex_agent.update.machine import State

if TYPE_CHECKING:  # argparse is loaded only for a command line _plain does not read
    import argparse

# Fault injection for the power-cut tests only: the agent dies once, right after entering the
# named state. Deliberately outside the KERNEX_AGENT_ namespace of configuration options.
FAULT_ENV = "KERNEX_FAULT_CRASH_IN"

log = logging.getLogger("kernex_agent")

DEFAULT_CONFIG = Path("/etc/kernex/agent.toml")


class Options(NamedTuple):
    """What the command line asks for (a tuple: a dataclass would generate eight methods)."""

    config: Path = DEFAULT_CONFIG
    check_config: bool = False
    health: bool = False
    connect_probe: bool = False


# The flags, spelled in full, and the option each sets.
_FLAGS = {
    "--check-config": "check_config",
    "--health": "health",
    "--connect-probe": "connect_probe",
}


async def _serve(agent: Agent) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await agent.run(stop)


def _probe(args: Options, config: AgentConfig) -> int | None:
    """The one-shot checks (--health, --connect-probe): their exit status, or None to run."""
    if args.health:
        healthy, reason = liveness.check(config.update.state_dir)
        print(f"kernex-agent: {reason}")
        return 0 if healthy else 1
    if args.connect_probe:
        try:
            ok, detail = connect_probe(config)
        except (OSError, ssl.SSLError, ValueError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        print(f"kernex-agent {AGENT_VERSION}: {detail}")
        return 0 if ok else 1
    return None


def _plain(argv: list[str]) -> Options | None:
    """The command lines the agent is run with, read without argparse; None for any other.

    argparse (with gettext behind it) is 0.4 MiB an idle agent would hold for ever to read two
    words. `--config PATH` (or `--config=PATH`) and the flags, each spelled in full, are read
    here with argparse's meaning; anything else (--help, --version, an abbreviation, a mistake)
    goes to argparse, which answers it. tests/unit/agent/test_cli.py holds the two to the same
    answers.
    """
    config = DEFAULT_CONFIG
    flags: dict[str, bool] = {}
    words = iter(argv)
    for word in words:
        if word in _FLAGS:
            flags[_FLAGS[word]] = True
        elif word == "--config":
            value = next(words, "")
            if not value or value.startswith("-"):
                return None
            config = Path(value)
        elif word.startswith("--config=") and len(word) > len("--config="):
            config = Path(word.removeprefix("--config="))
        else:
            return None
    return Options(config, **flags)


def _help_formatter(prog: str) -> "argparse.HelpFormatter":
    import argparse
    import contextlib

    # argparse's own formatter asks shutil for the terminal's width, and importing shutil loads
    # bz2 and lzma too: half a MiB an idle agent would hold for ever to format a --help it never
    # prints. os answers the same question.
    columns = 80
    with contextlib.suppress(OSError):
        columns = os.get_terminal_size().columns
    with contextlib.suppress(ValueError):
        columns = int(os.environ.get("COLUMNS", columns))
    return argparse.HelpFormatter(prog, width=max(columns - 2, 20))


def parse_with_argparse(argv: list[str]) -> Options:
    """Every command line: --help and --version exit here, mistakes exit 2 with a usage line."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="kernex-agent", description=__doc__, formatter_class=_help_formatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent.toml to read")
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    parser.add_argument(
        "--health",
        action="store_true",
        help="exit 0 if the running agent's liveness mark is fresh, 1 if not (for HEALTHCHECK)",
    )
    parser.add_argument(
        "--connect-probe",
        action="store_true",
        help="connect as the device, subscribe to its notices and exit 0 if granted "
        "(a new agent proving itself during a self-update)",
    )
    parser.add_argument("--version", action="version", version=f"kernex-agent {AGENT_VERSION}")
    args = parser.parse_args(argv)
    return Options(args.config, args.check_config, args.health, args.connect_probe)


def parse_args(argv: list[str]) -> Options:
    return _plain(argv) or parse_with_argparse(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a configuration problem)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kernex-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    status = _probe(args, config)
    if status is not None:
        return status
    if not args.check_config:
        tree = launch_target(config)
        if tree is not None:
            execute_from(tree, sys.argv[1:] if argv is None else argv)  # does not return
    logs.configure(config.log.level, config.log.format)
    crash_in = os.environ.get(FAULT_ENV)
    faults = CrashOnce(State(crash_in), config.update.state_dir) if crash_in else None
    try:
        agent = Agent(config, faults=faults, config_file=args.config.resolve())
    except (OSError, ssl.SSLError, ValueError) as exc:
        # Unreadable certificate, key or CA files: nothing will work until they are fixed.
        print(f"kernex-agent: cannot start: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"kernex-agent: configuration of {config.device_id} is valid")
        return 0
    # Not 0 when a task of the agent ended by itself: the service manager restarts it, and the
    # update loop guard counts that start. After committing a new agent: start me again.
    clean = asyncio.run(_serve(agent))
    if agent.restart_requested:
        return RESTART_EXIT_CODE
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
