"""Benchmark: streaming a 1 GiB bundle upload through the backend, against a direct upload.

Starts embedded PostgreSQL and SeaweedFS, runs the backend under uvicorn in its own process,
and for each run uploads the same 1 GiB file (a) through `POST /api/v1/bundles` over real HTTP
and (b) straight to the same S3 store with the minio SDK, twice: with the backend's own part size
and parallelism (3 parts of 8 MiB in flight; the baseline of `upload.ratio`) and one part at a
time (the baseline of the figures before the backend overlapped its parts). Reports median
throughput of each, the ratios, and the backend's peak RSS growth during the upload (sampled
every 20 ms).

    .venv/bin/python bench/upload_1gib.py [--runs 3] [--size-mib 1024]
"""

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from minio import Minio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import Figure, median, record

from kernex_devstack.ports import free_port, wait_for_port
from kernex_devstack.postgres import EmbeddedPostgres
from kernex_devstack.s3 import EmbeddedS3
from kernex_protocol.manifest import ReleaseManifest, sign

MiB = 1024 * 1024


def make_file(path: Path, size_mib: int) -> str:
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for i in range(size_mib):
            chunk = block[i % MiB :] + block[: i % MiB]
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


class RssSampler:
    """Peak RSS of a process while active."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kernex-bench-upload-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    payload = work / "bundle.bin"
    sha256 = make_file(payload, args.size_mib)
    size = payload.stat().st_size
    key = Ed25519PrivateKey.generate()
    (work / "keys").mkdir()
    (work / "keys" / "release.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    with EmbeddedPostgres(work / "pg", durable=False) as pg, EmbeddedS3(work / "s3") as s3:
        creds = s3.credentials()
        port = free_port()
        env = {
            **os.environ,
            "KERNEX_DATABASE_URL": pg.url(),
            "KERNEX_ENVIRONMENT": "development",
            "KERNEX_STORAGE__BACKEND": "s3",
            "KERNEX_STORAGE__ENDPOINT": s3.endpoint,
            "KERNEX_STORAGE__SECURE": "false",
            "KERNEX_STORAGE__ACCESS_KEY": creds.access_key,
            "KERNEX_STORAGE__SECRET_KEY": creds.secret_key,
            "KERNEX_RELEASE__TRUSTED_KEYS_DIR": str(work / "keys"),
            "KERNEX_LOG__LEVEL": "WARNING",
        }
        cli = [sys.executable, "-m", "kernex_backend.cli"]
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        token = subprocess.run(
            [*cli, "create-api-key", "--name", "bench", "--scope", "write"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        server = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env)
        try:
            assert wait_for_port("127.0.0.1", port, 30), "the backend did not start"
            direct = Minio(
                s3.endpoint, access_key=creds.access_key, secret_key=creds.secret_key, secure=False
            )
            kernex_rates, direct_rates, sequential_rates = [], [], []
            growth, cpu_per_gib = [], []
            for run in range(args.runs):
                manifest = ReleaseManifest(
                    name="bench",
                    version=f"1.0.{run}",
                    device_type="bench",
                    sha256=sha256,
                    size=size,
                    created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
                )
                header = sign(manifest, key).to_json()
                backend = psutil.Process(server.pid)
                baseline_rss = backend.memory_info().rss
                cpu_before = sum(backend.cpu_times()[:2])
                with RssSampler(server.pid) as sampler, payload.open("rb") as handle:
                    started = time.perf_counter()
                    response = httpx.post(
                        f"http://127.0.0.1:{port}/api/v1/bundles",
                        content=iter(lambda: handle.read(MiB), b""),
                        headers={
                            "Authorization": f"Bearer {token}",
                            "Kernex-Release": header,
                            "Content-Length": str(size),
                        },
                        timeout=600,
                    )
                    elapsed = time.perf_counter() - started
                assert response.status_code == 201, response.text
                cpu_per_gib.append((sum(backend.cpu_times()[:2]) - cpu_before) / (size / 1024**3))
                kernex_rates.append(size / MiB / elapsed)
                growth.append((sampler.peak - baseline_rss) / MiB)
                bundle_id = response.json()["id"]
                httpx.delete(
                    f"http://127.0.0.1:{port}/api/v1/bundles/{bundle_id}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=60,
                )

                for parallel, rates in ((3, direct_rates), (1, sequential_rates)):
                    started = time.perf_counter()
                    direct.fput_object(
                        "kernex-bundles",
                        f"direct/{run}",
                        str(payload),
                        part_size=8 * MiB,
                        num_parallel_uploads=parallel,
                    )
                    rates.append(size / MiB / (time.perf_counter() - started))
                    direct.remove_object("kernex-bundles", f"direct/{run}")
                print(
                    f"run {run + 1}: kernex {kernex_rates[-1]:.1f} MiB/s, "
                    f"direct {direct_rates[-1]:.1f} MiB/s "
                    f"({sequential_rates[-1]:.1f} one part at a time), "
                    f"backend RSS growth {growth[-1]:.1f} MiB",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(30)

    kernex, direct_rate = median(kernex_rates), median(direct_rates)
    sequential = median(sequential_rates)
    figures = [
        Figure(
            "upload.throughput_mib_s",
            kernex,
            "MiB/s",
            baseline=direct_rate,
            ratio=round(kernex / direct_rate, 3),
        ),
        Figure(
            "upload.ratio",
            round(kernex / direct_rate, 3),
            "x",
            baseline=1.0,
            ratio=round(kernex / direct_rate, 3),
        ),
        Figure(
            "upload.ratio_vs_sequential",
            round(kernex / sequential, 3),
            "x",
            baseline=1.0,
            ratio=round(kernex / sequential, 3),
        ),
        Figure("upload.rss_growth_mib", median(growth), "MiB"),
        Figure("upload.backend_cpu_s_per_gib", median(cpu_per_gib), "CPU s/GiB"),
    ]
    record(
        f"Bundle upload, {args.size_mib} MiB streamed through the backend",
        f".venv/bin/python bench/upload_1gib.py --runs {args.runs} --size-mib {args.size_mib}",
        figures,
        [
            f"{args.runs} runs; medians. Baseline: minio SDK fput_object of the same file "
            "to the same SeaweedFS in the same run, 8 MiB parts, 3 in flight as the backend "
            f"sends them ({direct_rate:.0f} MiB/s); `upload.ratio_vs_sequential` compares with "
            f"one part at a time ({sequential:.0f} MiB/s), the baseline of earlier figures.",
            "RSS growth: the backend process's peak RSS during the upload minus its RSS "
            "just before it.",
            f"Per run: kernex {', '.join(f'{r:.0f}' for r in kernex_rates)} MiB/s; "
            f"direct {', '.join(f'{r:.0f}' for r in direct_rates)} MiB/s; "
            f"one part at a time {', '.join(f'{r:.0f}' for r in sequential_rates)} MiB/s; "
            f"growth {', '.join(f'{g:.0f}' for g in growth)} MiB.",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
