"""`kernex-provision broker-run`: the broker container's main process reloads Mosquitto when the
CRL or ACL changes, and only then; forwards SIGTERM; exits with Mosquitto's status. Run as a
real process around a stand-in broker that records the signals it gets."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

BIN = Path(sys.executable).parent

FAKE_BROKER = textwrap.dedent(
    """\
    #!{python}
    import signal, sys, time
    log = open(sys.argv[0] + ".log", "a", buffering=1)
    signal.signal(signal.SIGHUP, lambda *_: log.write("HUP\\n"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    log.write("started " + " ".join(sys.argv[1:]) + "\\n")
    while True:
        time.sleep(0.05)
    """
)


def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_reloads_on_change_only_and_forwards_termination(tmp_path: Path) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    (broker_dir / "acl").write_text("pattern read x\n")
    (broker_dir / "crl.pem").write_text("crl 1\n")
    fake = tmp_path / "mosquitto"
    fake.write_text(FAKE_BROKER.format(python=sys.executable))
    fake.chmod(0o755)
    log = Path(str(fake) + ".log")

    def hups() -> int:
        return log.read_text().count("HUP") if log.exists() else 0

    runner = subprocess.Popen(
        [BIN / "kernex-provision", "broker-run", "--broker-dir", broker_dir, "--mosquitto", fake],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: log.exists() and "started -c" in log.read_text())
        assert str(broker_dir / "mosquitto.conf") in log.read_text()

        (broker_dir / "acl").write_text("pattern read x\nuser bad\ntopic deny #\n")
        wait_for(lambda: hups() == 1, timeout=2.0)
        (broker_dir / "crl.pem").write_text("crl 2\n")
        wait_for(lambda: hups() == 2, timeout=2.0)
        # The same content written again (a re-render with nothing new): no reload.
        (broker_dir / "crl.pem").write_text("crl 2\n")
        time.sleep(1.2)
        assert hups() == 2

        os.kill(runner.pid, signal.SIGTERM)
        _, stderr = runner.communicate(timeout=10)
        assert runner.returncode == 7  # the broker's own status
        assert stderr.count("mosquitto reloaded") == 2
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
