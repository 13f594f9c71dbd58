"""Tokens (issue 14): stored as hashes, refused at once when revoked, expired or their user is
deactivated; the command line that makes the first admin; no cross-site requests."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import timedelta

import factories
import pytest
from conftest import ROOT, bearer
from sqlalchemy import select

from backend.config import get_settings
from backend.db import utcnow
from backend.jobs.models import JobStatus
from backend.users.models import ApiToken


def test_a_token_is_random_shown_once_and_stored_as_its_hash(db, client_as):
    user, _ = factories.user(db, role="member")
    member = client_as(factories.user(db, role="member", name=f"{user.name}-2")[1])
    created = member.post("/tokens", json={"name": "laptop", "expires_days": 30})
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    assert secret.startswith("dl_") and len(secret) >= 3 + 43  # 32 random bytes, base64
    row = db.scalar(select(ApiToken).where(ApiToken.id == created.json()["id"]))
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str([getattr(row, c.name) for c in ApiToken.__table__.columns])
    listed = member.get("/tokens").json()
    assert created.json()["id"] in [t["id"] for t in listed]
    assert all("token" not in t for t in listed)  # never shown again
    assert client_as(secret).get("/users/me").json()["name"] == f"{user.name}-2"
    # a member cannot make tokens for someone else
    refused = member.post("/tokens", json={"name": "x", "user": user.name})
    assert refused.status_code == 403


def test_revoking_a_token_takes_effect_at_once(db, client_as):
    _, secret = factories.user(db, role="member")
    holder = client_as(secret)
    token_id = holder.get("/tokens").json()[0]["id"]
    assert holder.get("/jobs").status_code == 200
    assert holder.delete(f"/tokens/{token_id}").status_code == 200
    refused = holder.get("/jobs")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]["message"]


def test_expired_unknown_and_deactivated_are_refused(db, client, client_as):
    user, secret = factories.user(db, role="viewer")
    assert client_as(secret).get("/jobs").status_code == 200
    token = db.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
    token.expires_at = utcnow() - timedelta(seconds=1)
    db.commit()
    assert "expired" in client_as(secret).get("/jobs").text
    assert "not known" in client_as(secret + "x").get("/jobs").text
    assert client_as(None).get("/jobs").status_code == 401
    basic = client_as(None).get("/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    other, other_secret = factories.user(db, role="viewer")
    assert client.patch(f"/users/{other.id}", json={"active": False}).status_code == 200
    refused = client_as(other_secret).get("/jobs")
    assert refused.status_code == 401 and "deactivated" in refused.text


def test_the_last_admin_cannot_be_demoted(db, client):
    me = client.get("/users/me").json()
    for user in client.get("/users").json():  # every other admin goes (rolled back after)
        if user["role"] == "admin" and user["id"] != me["id"]:
            assert client.patch(f"/users/{user['id']}", json={"active": False}).is_success
    refused = client.patch(f"/users/{me['id']}", json={"role": "member"})
    assert refused.status_code == 409 and "last active admin" in refused.text


def test_last_use_is_recorded(db, client_as):
    user, secret = factories.user(db, role="viewer")
    client_as(secret).get("/jobs")
    token = db.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
    db.refresh(token)
    assert token.last_used_at is not None


def test_a_cross_site_text_plain_post_cannot_cancel(db, client_as, dataset_id):
    member, secret = factories.user(db, role="member")
    job = factories.job(db, dataset_id=dataset_id, owner_id=member.id)
    # what a page on another site can send without asking: a form or text/plain, no token
    cross_site = {"Origin": "https://elsewhere.example", "Content-Type": "text/plain"}
    anonymous = client_as(None).post(f"/jobs/{job.id}/cancel", content="x", headers=cross_site)
    assert anonymous.status_code == 401
    # even with the token (which a browser would only send after a CORS preflight)
    with_token = client_as(secret).post(f"/jobs/{job.id}/cancel", content="x", headers=cross_site)
    assert with_token.status_code == 415
    form = client_as(secret).post(
        f"/jobs/{job.id}/cancel",
        content="a=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    db.refresh(job)
    assert job.status == JobStatus.queued and not job.cancel_requested


def test_cors_is_closed_unless_origins_are_configured(client, monkeypatch, request):
    preflight = {
        "Origin": "https://lab.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    closed = client.options("/jobs", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in client.get("/jobs", headers=preflight).headers
    monkeypatch.setenv("DETLAB_CORS_ORIGINS", "https://lab.example")
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    opened = client.options("/jobs", headers=preflight)
    assert opened.headers["access-control-allow-origin"] == "https://lab.example"
    elsewhere = client.options("/jobs", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in elsewhere.headers


def test_a_wildcard_cors_origin_is_refused():
    from backend.config import Settings

    with pytest.raises(ValueError, match="no '\\*'"):
        Settings(cors_origins="*")


def _admin_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backend.users.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_makes_the_first_admin_and_their_token(client, pg_url):
    name = f"first-{uuid.uuid4().hex[:6]}"
    made = _admin_cli("create-user", name, "--role", "admin")
    assert made.returncode == 0, made.stderr
    again = _admin_cli("create-user", name, "--role", "admin")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert _admin_cli("create-user", name, "--exist-ok").returncode == 0
    token = _admin_cli("create-token", name, "--name", "setup")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("dl_") and "\n" not in secret  # alone on stdout
    # the API on its own sessions (not the test's transaction), as another process would be
    from fastapi.testclient import TestClient

    from backend.main import create_app

    own = TestClient(create_app(migrate=False))
    me = own.get("/users/me", headers=bearer(secret)).json()
    assert (me["name"], me["role"]) == (name, "admin")
    listed = _admin_cli("list-tokens", name)
    token_id = listed.stdout.split("\t")[0]
    assert secret not in listed.stdout and "active" in listed.stdout
    assert name in _admin_cli("list-users").stdout
    assert _admin_cli("revoke-token", token_id).returncode == 0
    assert own.get("/users/me", headers=bearer(secret)).status_code == 401
    trail = client.get("/audit", params={"object_type": "token", "limit": 50}).json()["items"]
    made_here = [e for e in trail if e["detail"].get("for") == name]
    assert [e["action"] for e in made_here] == ["token.revoke", "token.create"]
    assert all(e["user_name"].startswith("cli") for e in made_here)


def test_tokens_work_on_sqlite_the_demos_database(tmp_path):
    """SQLite gives times back without their zone: expiry and last use still compare."""
    from sqlalchemy.orm import Session

    from backend.db import make_engine
    from backend.migrate import upgrade_head
    from backend.users import service
    from backend.users.models import Role

    url = f"sqlite:///{tmp_path / 'detlab.db'}"
    upgrade_head(url)
    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as session:
        user = service.create_user(session=session, name="demo-admin", role=Role.admin)
        _, secret = service.create_token(
            session=session, user=user, name="demo", expires_in=timedelta(days=1)
        )
    now = utcnow()
    for later in (timedelta(0), timedelta(seconds=5), timedelta(minutes=5)):
        with Session(engine) as session:  # a fresh read, as each request makes
            found = service.authenticate(session=session, secret=secret, now=now + later)
            assert found.name == "demo-admin"
    with Session(engine) as session, pytest.raises(Exception, match="expired"):
        service.authenticate(session=session, secret=secret, now=now + timedelta(days=2))
    engine.dispose()
