"""Who may call what (issue 14): every route of the app, walked from its route table, for
anonymous, viewer, member and admin; ownership of jobs; the audit trail of a change."""

from __future__ import annotations

import re

import factories
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from backend.jobs.models import JobStatus
from backend.main import create_app
from backend.users.access import Require
from backend.users.models import Role

ROLES = ("viewer", "member", "admin")


def _rule(route: APIRoute) -> Role | None | str:
    """The route's access rule: a Role, None for public; 'none' or 'several' when it has not
    exactly one."""
    found: list[Role | None] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dependant = stack.pop()
        if isinstance(dependant.call, Require):
            found.append(dependant.call.role)
        elif getattr(dependant.call, "detlab_public", False):
            found.append(None)
        stack.extend(dependant.dependencies)
    if len(set(found)) != 1:
        return "none" if not found else "several"
    return found[0]


def _routes() -> list[tuple[str, str, Role | None | str]]:
    routes = []
    for context in iter_route_contexts(create_app(migrate=False).routes):
        if isinstance(context.original_route, APIRoute):
            for method in sorted(context.methods or ()):
                routes.append((method, context.path, _rule(context.original_route)))
    return routes


ROUTES = _routes()


def test_every_route_declares_exactly_one_access_rule():
    undeclared = [(m, p, rule) for m, p, rule in ROUTES if rule in ("none", "several")]
    assert not undeclared, f"routes without exactly one access rule: {undeclared}"
    assert ("GET", "/health", None) in ROUTES  # the only public one
    assert [p for _, p, rule in ROUTES if rule is None] == ["/health"]
    rules = {(m, p): rule for m, p, rule in ROUTES}
    assert rules["POST", "/jobs/{job_id}/requeue"] == Role.admin
    assert rules["GET", "/audit"] == Role.admin
    assert rules["POST", "/jobs"] == Role.member
    assert rules["GET", "/leaderboard"] == Role.viewer


@pytest.fixture
def people(db, client_as):
    """A client per role (and one without a token), and two members' jobs."""
    clients = {"anonymous": client_as(None)}
    users = {}
    for role in ROLES:
        users[role], token = factories.user(db, role=role)
        clients[role] = client_as(token)
    other, _ = factories.user(db, role="member")
    return clients, users, other


def _url(path: str, ids: dict[str, int]) -> str:
    """path with the given ids, and an id nothing has for any other parameter."""
    return re.sub(r"\{(\w+)\}", lambda m: str(ids.get(m.group(1), 2**31 - 1)), path)


@pytest.mark.parametrize(("method", "path", "rule"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_each_role_is_let_in_or_refused_as_the_route_declares(
    db, people, dataset_id, method, path, rule
):
    clients, users, _ = people
    job = factories.job(db, dataset_id=dataset_id, owner_id=users["member"].id)
    ids = {"job_id": job.id, "job_a": job.id, "job_b": job.id, "dataset_id": dataset_id}
    url = _url(path, ids)
    body = {"json": {}} if method in ("POST", "PATCH") and "cancel" not in path else {}
    anonymous = clients["anonymous"].request(method, url, **body)
    if rule is None:
        assert anonymous.status_code == 200
        return
    assert anonymous.status_code == 401, (method, path, anonymous.text)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for role in ROLES:
        response = clients[role].request(method, url, **body)
        if Role(role).rank < rule.rank:
            assert response.status_code == 403, (role, method, path, response.text)
            assert f"needs the {rule.value} role" in response.json()["detail"]["message"]
        else:
            assert response.status_code not in (401, 403), (role, method, path, response.text)
            assert response.status_code < 500


def test_reads_answer_every_role(db, people, dataset_id):
    clients, users, _ = people
    job = factories.job(db, dataset_id=dataset_id, owner_id=users["member"].id)
    for role in ROLES:
        for url in ("/jobs", f"/jobs/{job.id}", "/datasets", "/weights", "/leaderboard"):
            assert clients[role].get(url).status_code == 200, (role, url)
        me = clients[role].get("/users/me").json()
        assert (me["name"], me["role"]) == (users[role].name, role)
    assert clients["viewer"].get(f"/jobs/{job.id}").json()["owner"] == users["member"].name


def test_members_cancel_their_own_jobs_and_not_anothers(db, people, dataset_id):
    clients, users, other = people
    own = factories.job(db, dataset_id=dataset_id, owner_id=users["member"].id)
    theirs = factories.job(db, dataset_id=dataset_id, owner_id=other.id)
    refused = clients["member"].post(f"/jobs/{theirs.id}/cancel")
    assert refused.status_code == 403
    assert f"belongs to {other.name}" in refused.json()["detail"]["message"]
    db.refresh(theirs)
    assert theirs.status == JobStatus.queued and not theirs.cancel_requested
    assert clients["member"].post(f"/jobs/{own.id}/cancel").json()["status"] == "cancelled"
    # an admin cancels anyone's
    assert clients["admin"].post(f"/jobs/{theirs.id}/cancel").json()["status"] == "cancelled"
    # a job from before users has no owner: only admins change it
    orphan = factories.job(db, dataset_id=dataset_id)
    refused = clients["member"].post(f"/jobs/{orphan.id}/cancel")
    assert refused.status_code == 403 and "has no owner" in refused.text


def test_submitting_records_the_owner_and_owner_me_filters(db, people, dataset_id):
    clients, users, other = people
    spec = {"dataset_id": dataset_id, "iterations": 10, **factories.TINY_TRAINING}
    created = clients["member"].post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    assert created.json()["owner"] == users["member"].name
    factories.job(db, dataset_id=dataset_id, owner_id=other.id)
    mine = clients["member"].get("/jobs", params={"owner": "me"}).json()
    assert [j["id"] for j in mine["items"]] == [created.json()["id"]]
    by_name = clients["viewer"].get("/jobs", params={"owner": other.name}).json()
    assert {j["owner"] for j in by_name["items"]} == {other.name}
    unknown = clients["viewer"].get("/jobs", params={"owner": "nobody-at-all"})
    assert unknown.status_code == 422 and "no user named" in unknown.text


def test_the_audit_trail_records_a_cancel_with_its_user(db, people, dataset_id):
    clients, users, _ = people
    job = factories.job(db, dataset_id=dataset_id, owner_id=users["member"].id)
    assert clients["member"].post(f"/jobs/{job.id}/cancel").status_code == 200
    trail = clients["admin"].get("/audit", params={"action": "job.cancel", "object_id": job.id})
    assert trail.status_code == 200
    (event,) = trail.json()["items"]
    assert event["user_name"] == users["member"].name
    assert event["user_id"] == users["member"].id
    assert (event["object_type"], event["object_id"]) == ("job", job.id)
    assert event["client"]  # where from: the test client's address
    assert event["at"]
    assert clients["member"].get("/audit").status_code == 403
    by_user = clients["admin"].get("/audit", params={"user": users["member"].name}).json()
    assert by_user["total"] == 1


def test_registrations_and_user_changes_are_audited(db, people, shapes):
    clients, users, _ = people
    registered = clients["member"].post(
        "/datasets", json={"name": "audited", **factories.dataset_files(shapes)}
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["owner"] == users["member"].name
    made = clients["admin"].post("/users", json={"name": "newcomer", "role": "viewer"})
    assert made.status_code == 201
    token = clients["admin"].post("/tokens", json={"name": "laptop", "user": "newcomer"})
    assert token.status_code == 201
    actions = [
        e["action"] for e in clients["admin"].get("/audit", params={"limit": 10}).json()["items"]
    ]
    assert actions[:3] == ["token.create", "user.create", "dataset.register"]
