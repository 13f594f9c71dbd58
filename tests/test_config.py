import subprocess
import sys
from pathlib import Path

import pytest

from backend.config import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_server(tmp_path, monkeypatch):
    for key in (
        "DETLAB_DATABASE_URL",
        "DETLAB_BROKER_URL",
        "DETLAB_DATA_ROOTS",
        "DETLAB_ARTIFACT_ROOT",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DETLAB_HOME", str(tmp_path))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'detlab.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.artifact_root == tmp_path / "artifacts"
    assert settings.data_roots == [tmp_path / "data"]


def test_postgres_url_uses_psycopg3(monkeypatch):
    monkeypatch.setenv("DETLAB_DATABASE_URL", "postgresql://u@db:5432/detlab")
    assert Settings().database_url == "postgresql+psycopg://u@db:5432/detlab"


def test_data_roots_from_a_path_list(monkeypatch, tmp_path):
    monkeypatch.setenv("DETLAB_DATA_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert Settings().data_roots == [tmp_path / "a", tmp_path / "b"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DETLAB_DATABASE_URL", "mysql://x/y", "postgresql"),
        ("DETLAB_BROKER_URL", "kafka://x", "redis://"),
        ("DETLAB_DATA_ROOTS", "/", "'/' is not accepted"),
        ("DETLAB_VISIBILITY_TIMEOUT_S", "10", "greater than or equal to 3600"),
        ("DETLAB_HEARTBEAT_STALE_S", "2", "at least three DETLAB_HEARTBEAT_INTERVAL_S"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert variable in str(error.value)
    assert expected in str(error.value)


def test_api_refuses_to_start_on_invalid_settings(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DETLAB_HOME": str(tmp_path),
        "DETLAB_DATABASE_URL": "oracle://nope",
    }
    code = (
        "from fastapi.testclient import TestClient\n"
        "from backend.main import create_app\n"
        "with TestClient(create_app()):\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "DETLAB_DATABASE_URL" in result.stderr
