"""The object store's calls are timed and its failures counted, for /metrics: against a real
S3 server, and against one that is not there."""

import datetime as dt
import uuid

import pytest

from kernex_backend.bundles.storage import S3Storage, StorageError
from kernex_backend.core.config import StorageSettings
from kernex_devstack.ports import free_port
from kernex_devstack.s3 import EmbeddedS3
from tests.integration.bundles.conftest import remove_bucket, s3_storage_settings


async def test_calls_are_timed_and_failures_counted(s3_server: EmbeddedS3) -> None:
    bucket = f"kernex-test-{uuid.uuid4().hex[:12]}"
    storage = S3Storage.from_settings(StorageSettings(**s3_storage_settings(s3_server, bucket)))
    try:
        await storage.ensure_ready()
        assert not await storage.exists("no/such/object")  # a missing object is an answer
        await storage.download_url("no/such/object", expires=dt.timedelta(minutes=1))
    finally:
        remove_bucket(s3_server, bucket)
    stats = storage.stats
    assert stats.calls["ensure_bucket"] == 1 and stats.calls["stat"] == 1
    assert stats.errors == {}
    assert stats.seconds["stat"] > 0

    # Unreachable: urllib3 gives up with its own error type, which must become StorageError
    # (a 503 for the API, a warning at start-up), never an unhandled exception.
    gone = S3Storage.from_settings(
        StorageSettings(
            **{**s3_storage_settings(s3_server, bucket), "endpoint": f"127.0.0.1:{free_port()}"}
        )
    )
    with pytest.raises(StorageError):
        await gone.check()
    assert gone.stats.calls["check"] == 1 and gone.stats.errors["check"] == 1
