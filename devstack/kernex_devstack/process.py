"""A child process that lives exactly as long as its owner.

Services started for the demo or the tests must never outlive them: each child asks the kernel to
send it SIGTERM when its parent dies (PR_SET_PDEATHSIG), so a killed test run leaves no broker or
database behind holding ports.
"""

import ctypes
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ServiceStartError(RuntimeError):
    """Raised when a service does not become ready; the message holds its log tail."""


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def unprivileged_user(name: str) -> pwd.struct_passwd:
    """Return system user `name`, creating it if we are root and it does not exist."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(
        ["/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(name)


def ensure_traversable(path: Path) -> None:
    """Let an unprivileged service user reach `path` (it needs search permission on each
    parent directory)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, or a note that it is missing."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


class ManagedProcess:
    """A service child process with a log file and a readiness probe."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool],
        user: pwd.struct_passwd | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 15.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._user = user
        self._env = env
        self._cwd = cwd
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        """Start the child and wait until its readiness probe passes."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads exist in the child yet
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
                extra_groups=[] if self._user else None,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not the child
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceStartError(
                    f"{self.name} exited with code {self._proc.returncode} while starting:\n"
                    f"{log_tail(self.log_path)}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        self.stop()
        raise ServiceStartError(
            f"{self.name} was not ready within {timeout:.0f}s:\n{log_tail(self.log_path)}"
        )

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the child (for example SIGHUP to reload)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def running(self) -> bool:
        """Tell whether the child is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        """Stop the child gracefully, killing it after `timeout` seconds."""
        timeout = self._stop_timeout if timeout is None else timeout
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(self._stop_signal)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
