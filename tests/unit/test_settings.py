"""Backend settings: environment, nested groups, *_FILE secrets and default-secret refusal."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from kernex_backend.core.config import Settings

URL = "postgresql+asyncpg://kernex:s3cr3t-Value@db:5432/kernex"


@pytest.fixture(autouse=True)
def storage_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production settings also need a real object-store secret."""
    monkeypatch.setenv("KERNEX_STORAGE__SECRET_KEY", "a-real-looking-secret-value")


def test_reads_prefixed_and_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEX_DATABASE_URL", URL)
    monkeypatch.setenv("KERNEX_API__PORT", "9001")
    monkeypatch.setenv("KERNEX_DB__POOL_SIZE", "3")
    settings = Settings()
    assert settings.database_url.get_secret_value() == URL
    assert settings.api.port == 9001
    assert settings.db.pool_size == 3
    assert "s3cr3t" not in repr(settings)  # secrets do not leak into logs or tracebacks


def test_secrets_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "db-url"
    secret_file.write_text(URL + "\n")
    monkeypatch.delenv("KERNEX_DATABASE_URL", raising=False)
    monkeypatch.setenv("KERNEX_DATABASE_URL_FILE", str(secret_file))
    monkeypatch.setenv("KERNEX_DB__POOL_SIZE_FILE", str(tmp_path / "pool"))
    (tmp_path / "pool").write_text("7")
    settings = Settings()
    assert settings.database_url.get_secret_value() == URL
    assert settings.db.pool_size == 7


def test_direct_value_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("postgresql+asyncpg://x:from-file-pw@h/d")
    monkeypatch.setenv("KERNEX_DATABASE_URL", URL)
    monkeypatch.setenv("KERNEX_DATABASE_URL_FILE", str(tmp_path / "f"))
    assert Settings().database_url.get_secret_value() == URL


def test_unreadable_secret_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KERNEX_DATABASE_URL_FILE", str(tmp_path / "missing"))
    monkeypatch.delenv("KERNEX_DATABASE_URL", raising=False)
    with pytest.raises(ValueError, match="KERNEX_DATABASE_URL_FILE points to an unreadable file"):
        Settings()


def test_database_password_file_fills_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("p@ss:w/rd#1\n")
    monkeypatch.setenv("KERNEX_DATABASE_URL", "postgresql+asyncpg://kernex@db:5432/kernex")
    monkeypatch.setenv("KERNEX_DATABASE_PASSWORD_FILE", str(tmp_path / "pw"))
    url = Settings().database_url.get_secret_value()
    assert url == "postgresql+asyncpg://kernex:p%40ss%3Aw%2Frd%231@db:5432/kernex"


def test_tls_certificate_and_key_go_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEX_DATABASE_URL", URL)
    monkeypatch.setenv("KERNEX_API__TLS_CERT_FILE", "/etc/kernex/api.crt")
    with pytest.raises(ValidationError, match=r"tls_cert_file and api\.tls_key_file go together"):
        Settings()
    monkeypatch.setenv("KERNEX_API__TLS_KEY_FILE", "/etc/kernex/api.key")
    settings = Settings()
    assert settings.api.https and settings.api.forwarded_allow_ips == ""


@pytest.mark.parametrize("password", ["kernex", "postgres", "changeme", "minioadmin"])
def test_production_refuses_known_default_passwords(password: str) -> None:
    url = f"postgresql+asyncpg://kernex:{password}@db/kernex"
    with pytest.raises(ValidationError, match="well-known default password"):
        Settings(database_url=url, environment="production")
    Settings(database_url=url, environment="development")


def test_wrong_driver_is_refused() -> None:
    with pytest.raises(ValidationError, match="postgresql\\+asyncpg"):
        Settings(database_url="postgresql://u:p@h/d")


def test_default_page_size_cannot_exceed_cap() -> None:
    with pytest.raises(ValidationError, match="page_size_default"):
        Settings(database_url=URL, api={"page_size_default": 600, "page_size_max": 500})


def test_production_refuses_default_storage_secrets_and_unsigned_bundles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KERNEX_STORAGE__SECRET_KEY", "minioadmin")
    with pytest.raises(ValidationError, match=r"storage\.secret_key"):
        Settings(database_url=URL)
    monkeypatch.setenv("KERNEX_STORAGE__SECRET_KEY", "a-real-looking-secret-value")
    with pytest.raises(ValidationError, match="allow_unsigned is for development only"):
        Settings(database_url=URL, release={"allow_unsigned": True})
    with pytest.raises(ValidationError, match="download_signing_key"):
        Settings(database_url=URL, storage={"backend": "local", "download_signing_key": "short"})
    assert Settings(database_url=URL, environment="development", release={"allow_unsigned": True})
