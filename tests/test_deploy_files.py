"""docker-compose.yml and Dockerfile.gpu read against the code (no Docker engine runs here)."""

import importlib
import re
from pathlib import Path

import yaml

from backend.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile.gpu").read_text()


def test_compose_has_the_whole_stack():
    assert set(COMPOSE["services"]) == {"postgres", "redis", "api", "worker", "dashboard"}
    worker = COMPOSE["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert COMPOSE["services"]["api"]["build"]["dockerfile"] == "Dockerfile.gpu"


def test_every_detlab_variable_is_a_setting_and_valid():
    fields = set(Settings.model_fields)
    for name, service in COMPOSE["services"].items():
        env = service.get("environment", {})
        for variable in env:
            if not variable.startswith("DETLAB_") or variable == "DETLAB_API_URL":
                continue
            assert variable.removeprefix("DETLAB_").lower() in fields, (name, variable)
    env = COMPOSE["services"]["api"]["environment"]
    settings = Settings(**{k.removeprefix("DETLAB_").lower(): v for k, v in env.items()})
    assert settings.database_url.startswith("postgresql+psycopg://detlab:detlab@postgres")
    assert settings.broker_url == "redis://redis:6379/0"
    assert COMPOSE["services"]["dashboard"]["environment"]["DETLAB_API_URL"] == "http://api:8000"


def test_commands_point_at_code_that_exists():
    api = COMPOSE["services"]["api"]["command"]
    module, attribute = api[1].split(":")
    assert hasattr(importlib.import_module(module), attribute)
    worker = COMPOSE["services"]["worker"]["command"]
    assert worker[:3] == ["celery", "-A", "worker.celery_app"]
    assert (ROOT / "worker" / "celery_app.py").is_file()
    dashboard = COMPOSE["services"]["dashboard"]["command"]
    assert (ROOT / dashboard[2]).is_file()


def test_volumes_and_data_roots_agree():
    env = COMPOSE["x-detlab-env"]
    for name in ("api", "worker"):
        mounts = [v.split(":")[1] for v in COMPOSE["services"][name]["volumes"]]
        assert env["DETLAB_DATA_ROOTS"] in mounts and env["DETLAB_ARTIFACT_ROOT"] in mounts
    postgres = COMPOSE["services"]["postgres"]["environment"]
    url = env["DETLAB_DATABASE_URL"]
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres" in url
    assert url.endswith("/" + postgres["POSTGRES_DB"])


def test_dockerfile_builds_mmcv_with_cuda_ops_through_the_installer():
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-cudnn-devel", DOCKERFILE, re.M)
    assert "FORCE_CUDA=1" in DOCKERFILE and "MMCV_WITH_OPS=1" in DOCKERFILE
    assert re.search(r'TORCH_CUDA_ARCH_LIST="[\d.;]+"', DOCKERFILE)
    assert "./scripts/install.sh" in DOCKERFILE and (ROOT / "scripts" / "install.sh").is_file()
    assert "from mmcv.ops import nms, RoIAlign" in DOCKERFILE
    for copied in re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M):
        assert copied == "." or (ROOT / copied).exists(), copied
