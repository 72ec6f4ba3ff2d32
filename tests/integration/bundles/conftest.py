"""Bundle tests run against a real S3 server (SeaweedFS) and against the local backend."""

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from minio import Minio

from kernex_backend.core.config import Settings
from kernex_devstack.s3 import EmbeddedS3
from kernex_protocol.manifest import ReleaseManifest, SignedRelease, sign
from tests.conftest import make_settings

ReleaseFactory = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trusted_keys_dir(tmp_path: Path, release_key: Ed25519PrivateKey) -> Path:
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / "release.pub").write_bytes(
        release_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return folder


def s3_storage_settings(server: EmbeddedS3, bucket: str = "kernex-test") -> dict[str, object]:
    creds = server.credentials()
    return {
        "backend": "s3",
        "endpoint": server.endpoint,
        "secure": False,
        "access_key": creds.access_key,
        "secret_key": creds.secret_key,
        "bucket": bucket,
    }


def remove_bucket(server: EmbeddedS3, bucket: str) -> None:
    creds = server.credentials()
    client = Minio(
        server.endpoint, access_key=creds.access_key, secret_key=creds.secret_key, secure=False
    )
    if not client.bucket_exists(bucket):
        return
    for item in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, item.object_name or "")
    client.remove_bucket(bucket)


@pytest.fixture(params=["s3", "local"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_settings(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[dict[str, object]]:
    if backend_kind == "s3":
        # A bucket per test, so no test sees another's objects; removed afterwards, which
        # frees the SeaweedFS collection (and its volumes) behind it.
        server: EmbeddedS3 = request.getfixturevalue("s3_server")
        bucket = f"kernex-test-{uuid.uuid4().hex[:12]}"
        yield s3_storage_settings(server, bucket)
        remove_bucket(server, bucket)
        return
    yield {
        "backend": "local",
        "local_dir": str(tmp_path / "bundles"),
        "public_base_url": "http://kernex.test",
        "download_signing_key": "k" * 40,
    }


@pytest.fixture
def settings(
    database_url: str, storage_settings: dict[str, object], trusted_keys_dir: Path
) -> Settings:
    return make_settings(
        database_url, storage=storage_settings, release={"trusted_keys_dir": trusted_keys_dir}
    )


@pytest.fixture
def make_release(release_key: Ed25519PrivateKey) -> ReleaseFactory:
    """Headers for uploading `payload` as a release signed by the trusted key (or `key`)."""

    def build(
        payload: bytes,
        *,
        name: str = "firmware",
        version: str = "1.0.0",
        device_type: str = "gateway",
        key: Ed25519PrivateKey | None = None,
        size: int | None = None,
        sha256: str | None = None,
        signed: bool = True,
    ) -> dict[str, str]:
        manifest = ReleaseManifest(
            name=name,
            version=version,
            device_type=device_type,
            sha256=sha256 or hashlib.sha256(payload).hexdigest(),
            size=len(payload) if size is None else size,
            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        )
        release = sign(manifest, key or release_key) if signed else SignedRelease(manifest)
        return {"Kernex-Release": release.to_json(), "Content-Type": "application/octet-stream"}

    return build
