"""docker-compose.yml, Dockerfile.gpu, the README's commands and scripts/demo.sh read against the
code (no Docker engine runs here; the demo runs on stub servers)."""

import hashlib
import importlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomllib
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.users import service as user_service
from backend.users.models import ApiToken, Role, User

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile.gpu").read_text()
README = (ROOT / "README.md").read_text()


WORKERS = ("worker-gpu0", "worker-gpu1")


def test_compose_has_the_whole_stack():
    assert set(COMPOSE["services"]) == {"postgres", "redis", "api", *WORKERS, "dashboard"}
    gpus, names = [], []
    for name in WORKERS:
        worker = COMPOSE["services"][name]
        (devices,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices["driver"] == "nvidia" and "gpu" in devices["capabilities"]
        gpus.append(tuple(devices["device_ids"]))
        names.append(worker["command"][worker["command"].index("--name") + 1])
    # two workers of one host: different GPUs, different names in the fleet
    assert len(set(gpus)) == 2 and len(set(names)) == 2
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
    for name in WORKERS:
        command = COMPOSE["services"][name]["command"]
        assert command[0] == "detlab-worker"
        # the console script pyproject.toml installs, which starts worker.celery_app
        script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        module, attribute = script["detlab-worker"].split(":")
        assert hasattr(importlib.import_module(module), attribute)
    assert (ROOT / "worker" / "celery_app.py").is_file()
    dashboard = COMPOSE["services"]["dashboard"]["command"]
    assert (ROOT / dashboard[2]).is_file()


def test_volumes_and_data_roots_agree():
    env = COMPOSE["x-detlab-env"]
    for name in ("api", *WORKERS):
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


# -- access: what is published, and the demo's token ------------------------------------------


def _published(port: object) -> tuple[str, str, str]:
    """host address, host port and container port of one compose `ports` entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port["published"]), str(port["target"])
    parts = str(port).split(":")
    assert len(parts) == 3, f"{port!r} names no host address, so it is published on all of them"
    return parts[0], parts[1], parts[2].split("/")[0]


def test_compose_publishes_the_api_and_dashboard_on_loopback_only():
    published = {}
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            host, host_port, container_port = _published(port)
            assert host == "127.0.0.1", (name, port)
            published[name] = (host_port, container_port)
    # Postgres and Redis are reached only by the other containers
    assert published == {"api": ("8000", "8000"), "dashboard": ("8501", "8501")}
    # inside its container each listens on every interface, or the mapping reaches nothing
    api = COMPOSE["services"]["api"]["command"]
    assert api[api.index("--host") + 1] == "0.0.0.0" and api[api.index("--port") + 1] == "8000"
    dashboard = COMPOSE["services"]["dashboard"]["command"]
    assert dashboard[dashboard.index("--server.address") + 1] == "0.0.0.0"
    assert dashboard[dashboard.index("--server.port") + 1] == "8501"


def test_compose_bakes_in_no_token():
    for name, service in COMPOSE["services"].items():
        assert "DETLAB_API_TOKEN" not in service.get("environment", {}), name


def test_the_first_admin_can_be_made_in_the_image():
    script = re.search(r'^detlab-admin = "(.+):(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert script, "pyproject.toml declares the detlab-admin command"
    module, attribute = script.groups()
    assert callable(getattr(importlib.import_module(module), attribute))
    # the image installs the project's console scripts and checks that this one runs
    assert re.search(r"^RUN pip install --no-deps -e \.", DOCKERFILE, re.M)
    assert "detlab-admin --help" in DOCKERFILE
    services = re.findall(r"docker compose run --rm (?:-T )?(\S+) detlab-admin", README)
    assert services, "the README says how to make the first admin with compose"
    for service in services:
        assert COMPOSE["services"][service]["image"] == COMPOSE["services"]["api"]["image"]


def test_every_curl_in_the_readme_sends_a_token():
    commands, command = [], ""
    for line in README.splitlines():
        if line.strip().startswith("curl ") or command:
            command += line
            if not line.rstrip().endswith("\\"):
                commands.append(command)
                command = ""
    assert len(commands) >= 8
    for command in commands:
        assert '-H "Authorization: Bearer $TOKEN"' in command, command


def test_demo_seeding_script_needs_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DETLAB_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "DETLAB_API_TOKEN is not set" in done.stderr and "scripts/demo.sh" in done.stderr


def test_demo_jobs_are_specs_the_api_accepts_as_written():
    from backend.jobs.spec import FinetuneSpec, PretrainSpec
    from scripts import demo

    for method in demo.METHODS:
        pretrain = PretrainSpec.model_validate({**demo.PRETRAIN, "method": method, "dataset_id": 1})
        assert pretrain.method == method
    for init in ("scratch", {"weights_id": 1}):
        spec = FinetuneSpec.model_validate({**demo.FINETUNE, "dataset_id": 1, "init": init})
        # every key the recipe sets reaches the spec as written
        assert {k: getattr(spec, k) for k in demo.FINETUNE} == {
            k: tuple(v) if isinstance(v, list) else v for k, v in demo.FINETUNE.items()
        }


STUB = """#!/bin/sh
# records how the demo started it, then stays up like the server it stands for
out="$DETLAB_HOME/started-$(basename "$0")"
printf '%s\\n' "$@" > "$out.args"
printf '%s' "${DETLAB_API_TOKEN-<unset>}" > "$out.tmp" && mv "$out.tmp" "$out.token"
exec sleep 300
"""


def _fake_venv(folder: Path) -> Path:
    """A venv for scripts/demo.sh whose servers are stubs; migrations and detlab-admin are real."""
    bin_ = folder / "bin"
    bin_.mkdir(parents=True)
    scripts = {
        "stub": STUB,
        "python": f"""#!/bin/sh
if [ "$1 $2" = "-m scripts.demo" ]; then exec "{bin_}/seed" "$@"; fi
exec "{sys.executable}" "$@"
""",
        "detlab-admin": f'#!/bin/sh\nexec "{sys.executable}" -m backend.users.cli "$@"\n',
    }
    for name, text in scripts.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    for name in ("uvicorn", "celery", "streamlit", "seed"):
        (bin_ / name).symlink_to(bin_ / "stub")
    # what scripts/install.sh finds when the venv is up to date
    stamp = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / "scripts" / "install.sh").read_bytes()
    )
    (folder / ".detlab-installed").write_text(stamp.hexdigest() + "\n")
    return folder


def _run_demo(tmp_path: Path, **env: str) -> tuple[dict[str, list[str]], dict[str, str], Path]:
    """Start scripts/demo.sh on stubs until every process is up, then stop it as Ctrl-C would.
    Returns each process's arguments and DETLAB_API_TOKEN, and the demo's home."""
    home = tmp_path / "home"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DETLAB_")}
    clean.update(DETLAB_VENV=str(_fake_venv(tmp_path / "venv")), DETLAB_HOME=str(home), **env)
    demo = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # as from a terminal: a shell started in the background (CI may start the tests so)
        # inherits SIGINT ignored, and bash cannot trap a signal ignored when it started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    names = ("uvicorn", "celery", "streamlit", "seed")
    try:
        deadline = time.monotonic() + 120
        while not all((home / f"started-{n}.token").exists() for n in names):
            assert demo.poll() is None, demo.communicate()[0]
            assert time.monotonic() < deadline, "the demo did not start its processes"
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        output = demo.communicate(timeout=60)[0]
        assert demo.returncode == 130, output
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    args = {n: (home / f"started-{n}.args").read_text().splitlines() for n in names}
    tokens = {n: (home / f"started-{n}.token").read_text() for n in names}
    return args, tokens, home


def _after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_demo_listens_on_loopback_and_signs_the_dashboard_in_with_a_token_of_its_run(tmp_path):
    args, tokens, home = _run_demo(tmp_path)
    assert _after(args["uvicorn"], "--host") == "127.0.0.1"
    assert _after(args["streamlit"], "--server.address") == "127.0.0.1"
    secret = tokens["seed"]
    assert secret.startswith(user_service.TOKEN_PREFIX) and tokens["streamlit"] == secret
    # the processes that do not call the API do not get the token
    assert tokens["uvicorn"] == tokens["celery"] == "<unset>"
    engine = create_engine(f"sqlite:///{home / 'detlab.db'}")
    with Session(engine) as session:
        token, user = session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == user_service.hash_token(secret))
        ).one()
    engine.dispose()
    assert (user.name, user.role, user.active) == ("demo-admin", Role.admin, True)
    assert token.expires_at is not None
    assert token.revoked_at is not None, "the demo's token outlived the demo"


def test_demo_dashboard_on_another_address_is_not_signed_in(tmp_path):
    args, tokens, _ = _run_demo(tmp_path, DETLAB_DASHBOARD_ADDRESS="0.0.0.0")
    assert _after(args["streamlit"], "--server.address") == "0.0.0.0"
    assert tokens["streamlit"] == "<unset>"
    assert tokens["seed"].startswith(user_service.TOKEN_PREFIX)
