"""Benchmark: the backend's CPU to build one device's signed notice, against the signature alone.

Every notice is signed for its device (device, deployment, attempt and validity window are in
its claims), so a rollout to N devices costs N Ed25519 signatures however it is built; what the
notifier adds around the signature (the claims' canonical JSON, the notice, its wire form) is
the part Kernex controls. This measures `_NoticeBatch.payload`, the notifier's per-device step,
for a batch of rows of one release, and in the same run the bare signature over claims of the
same size with the same key type: the ratio is what building costs on top of signing.

    .venv/bin/python bench/notice_building.py [--notices 5000] [--repeats 5]
"""

import argparse
import datetime as dt
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import Figure, median, record

from kernex_backend.bundles.storage import DownloadUrl
from kernex_backend.deployments.notices import _NoticeBatch


def rows(count: int) -> list[Any]:
    """What the notifier's query yields per device (the columns `payload` reads)."""
    deployment = uuid.uuid4()
    return [
        SimpleNamespace(
            deployment_id=deployment, device_id=f"device-{i:06d}", attempt=1, start_delay_s=0
        )
        for i in range(count)
    ]


def release() -> Any:
    """A bundle row with a stored signed manifest, as the backend keeps it."""
    return SimpleNamespace(
        id=uuid.uuid4(),
        name="app",
        version="1.2.3",
        device_type="gateway",
        sha256="a" * 64,
        size_bytes=1 << 20,
        manifest_created_at="2026-12-04T00:00:00+00:00",
        signature="s" * 88,
        signing_key_id="release-2026",
    )


def per_notice_us(work: Any, count: int) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notices", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    bundle = release()
    url = DownloadUrl(
        url="https://objects.example/kernex-bundles/" + "k" * 40 + "?X-Amz-Signature=" + "f" * 64,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    addressees = rows(args.notices)
    sample = _NoticeBatch(
        key=key, kid="notice-1", ttl=dt.timedelta(hours=24), urls={bundle.id: url}
    ).payload(addressees[0], bundle, None)
    claims = b"c" * 260  # a notice's claims are about this long
    built: list[float] = []
    signed: list[float] = []
    for _ in range(args.repeats):  # alternating, so both see the same host
        batch = _NoticeBatch(
            key=key, kid="notice-1", ttl=dt.timedelta(hours=24), urls={bundle.id: url}
        )
        built.append(
            per_notice_us(
                lambda batch=batch: [batch.payload(row, bundle, None) for row in addressees],
                args.notices,
            )
        )
        signed.append(per_notice_us(lambda: [key.sign(claims) for _ in addressees], args.notices))
    build, sign = median(built), median(signed)
    figures = [
        Figure("notice.build_cpu_us", round(build, 1), "us", round(sign, 1), round(build / sign, 2))
    ]
    notes = [
        f"{args.notices} notices of one release built by the notifier's `_NoticeBatch.payload` "
        f"(claims, Ed25519 signature, wire form of {len(sample)} bytes); medians of "
        f"{args.repeats} repeats, CPU per notice.",
        "Baseline (same run, alternating): the Ed25519 signature alone over 260 bytes, what "
        "every notice costs however it is built.",
        "Per repeat (built / signature alone, us): "
        + ", ".join(f"{b:.1f}/{s:.1f}" for b, s in zip(built, signed, strict=True))
        + ".",
    ]
    command = (
        f".venv/bin/python bench/notice_building.py --notices {args.notices} "
        f"--repeats {args.repeats}"
    )
    record(
        "Notice building: CPU per signed notice against the signature alone",
        command,
        figures,
        notes,
    )


if __name__ == "__main__":
    main()
