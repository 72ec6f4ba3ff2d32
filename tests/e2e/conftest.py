"""A whole Kernex per test: backend processes, agents, on the session's real services."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.s3 import EmbeddedS3
from tests.e2e.fleet import Fleet


@pytest.fixture
def fleet(
    tmp_path: Path, database_url: str, broker: EmbeddedBroker, s3_server: EmbeddedS3
) -> Iterator[Fleet]:
    running = Fleet(
        root=tmp_path,
        database_url=database_url,
        broker=broker,
        s3=s3_server,
        release_key=Ed25519PrivateKey.generate(),
    )
    yield running
    running.stop()
