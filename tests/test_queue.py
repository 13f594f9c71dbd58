"""The embedded broker: kombu's filesystem transport keeps everything under DETLAB_HOME."""

from __future__ import annotations

import json

from celery import Celery

from backend.config import Settings
from backend.queue import TASK_NAME, celery_config


def test_filesystem_broker_writes_only_under_the_home(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # kombu's own defaults are relative to the working directory
    monkeypatch.setenv("DETLAB_HOME", str(home))
    monkeypatch.setenv("DETLAB_BROKER_URL", "filesystem://")
    monkeypatch.setenv("DETLAB_QUEUE", "detlab-fs-test")
    settings = Settings()
    settings.prepare_folders()
    app = Celery("fs-test")
    app.conf.update(celery_config(settings))
    app.send_task(TASK_NAME, args=[42])

    assert list(cwd.iterdir()) == []
    messages = [p for p in settings.broker_folder.iterdir() if p.suffix == ".msg"]
    assert len(messages) == 1
    sent = json.loads(messages[0].read_text())
    assert sent["headers"]["task"] == TASK_NAME and sent["headers"]["argsrepr"] == "[42]"
    tables = {p.name for p in (settings.broker_folder / "control").iterdir()}
    assert "detlab-fs-test.exchange" in tables
