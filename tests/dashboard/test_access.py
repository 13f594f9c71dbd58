"""Signing in to the dashboard and what each role is shown, with AppTest against the real API
process: the sign-in form, a refused token, signing out, a token refused in the middle of a
session, answers cached for one token never shown to another, and the controls hidden from a
viewer and from a member on someone else's jobs.

The jobs these tests need are rows made by the factories in a queue no worker serves, so they
stay queued (or finished, with an evaluation) without training anything.
"""

from __future__ import annotations

import uuid

import factories
import pytest
import streamlit as st
from dashboard_seed import APP, open_page, texts
from sqlalchemy import text
from sqlalchemy.orm import Session
from streamlit.proto.TextInput_pb2 import TextInput
from streamlit.testing.v1 import AppTest

from backend.jobs.models import JobStatus
from dashboard.client import describe_detail

TOKEN_FIELD = "sign-in-token"
SIGN_IN = "FormSubmitter:sign-in-Sign in"
# no worker serves this queue: its jobs stay queued
IDLE_QUEUE = "dashboard-access-idle"


@pytest.fixture(autouse=True)
def dashboard_env(api, monkeypatch):
    """The pages point at the API process; no token comes from the environment unless a test
    sets one."""
    monkeypatch.setenv("DETLAB_API_URL", str(api.base_url))
    monkeypatch.delenv("DETLAB_API_TOKEN", raising=False)


def user_id(api, token: str) -> int:
    return api.get("/users/me", headers={"Authorization": f"Bearer {token}"}).json()["id"]


def refusal_of(api, token: str) -> str:
    """The API's own words on refusing `token`, as the dashboard shows them."""
    refused = api.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401, refused.text
    return describe_detail(refused.json()["detail"])


def sign_in(at: AppTest, token: str) -> AppTest:
    at.text_input(key=TOKEN_FIELD).input(token)
    return at.button(key=SIGN_IN).click().run()


def signed_in_as(at: AppTest) -> str:
    return texts(at.sidebar.markdown).replace("\\", "")


@pytest.fixture(scope="module")
def idle_jobs(api, pg_engine, shapes, make_user):
    """A member, another member and a viewer, each with their token; a queued job of each
    member, and a finished run of each without intervals (so its page offers to score it
    again), on a dataset of their own."""
    member, member_token = make_user("member")
    other, other_token = make_user("member")
    viewer, viewer_token = make_user("viewer")
    ids: dict[str, int] = {}
    with Session(pg_engine) as session:
        dataset_id = factories.dataset(session, shapes=shapes).id
        for who, token in (("own", member_token), ("other", other_token)):
            owner_id = user_id(api, token)
            ids[f"{who}-queued"] = factories.job(
                session,
                dataset_id=dataset_id,
                name=f"access-{who}-queued",
                queue=IDLE_QUEUE,
                owner_id=owner_id,
            ).id
            ids[f"{who}-finished"] = factories.finished_job(
                session, dataset_id=dataset_id, name=f"access-{who}-finished", owner_id=owner_id
            ).id
    yield {
        "member": (member, member_token),
        "other": (other, other_token),
        "viewer": (viewer, viewer_token),
        "jobs": ids,
    }
    # out of the other tests' lists of running and queued jobs, and off the leaderboards
    with pg_engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET status = 'cancelled' WHERE id = ANY(:ids)"),
            {"ids": list(ids.values())},
        )


def test_without_a_token_the_app_asks_for_one_and_signs_in_and_out(api, admin_token, monkeypatch):
    at = open_page("jobs")
    assert not at.exception
    assert texts(at.title) == "Sign in to DetLab"  # in place of the page
    assert at.text_input(key=TOKEN_FIELD).proto.type == TextInput.Type.PASSWORD
    assert "Signed in as" not in signed_in_as(at)

    wrong = f"dl_{uuid.uuid4().hex}"
    sign_in(at, wrong)
    assert not at.exception
    assert f"The API refused this token: {refusal_of(api, wrong)}" in texts(at.error)
    assert texts(at.title) == "Sign in to DetLab"
    assert "Signed in as" not in signed_in_as(at)

    admin = api.get("/users/me").json()
    sign_in(at, admin_token)
    assert not at.exception and not at.error, texts(at.error)
    assert f"Signed in as **{admin['name']}** (admin)" in signed_in_as(at)
    assert texts(at.title) == "Jobs"  # the page asked for, now shown
    assert "needs the member role" not in texts(at.info)  # an admin may submit
    # kept in the session only: not in the address
    assert admin_token not in str(dict(at.query_params))

    # signed out, the environment's token is not used behind the user's back
    monkeypatch.setenv("DETLAB_API_TOKEN", admin_token)
    at.button(key="sign-out").click().run()
    assert not at.exception
    assert texts(at.title) == "Sign in to DetLab"
    assert "Signed in as" not in signed_in_as(at)
    assert not at.warning  # a sign-out is no refusal


def test_the_environments_token_signs_in_and_a_refused_one_brings_the_form_back(
    api, admin_token, monkeypatch
):
    monkeypatch.setenv("DETLAB_API_TOKEN", admin_token)
    at = open_page("leaderboard")
    assert not at.exception and not at.error, texts(at.error)
    assert "Signed in as **" in signed_in_as(at)
    assert texts(at.title) == "Leaderboard"

    wrong = f"dl_{uuid.uuid4().hex}"
    monkeypatch.setenv("DETLAB_API_TOKEN", wrong)
    at = open_page("leaderboard")
    assert not at.exception
    assert texts(at.title) == "Sign in to DetLab"
    assert f"Your token was refused: {refusal_of(api, wrong)}" in texts(at.warning)


def test_a_token_refused_during_a_session_brings_the_sign_in_back(api, make_user):
    name, token = make_user("member")
    at = sign_in(open_page("jobs"), token)
    assert f"Signed in as **{name}** (member)" in signed_in_as(at)

    deactivated = api.patch(f"/users/{user_id(api, token)}", json={"active": False})
    assert deactivated.status_code == 200, deactivated.text
    st.cache_data.clear()  # as when the cached answers expire
    at.run()
    assert not at.exception
    assert texts(at.title) == "Sign in to DetLab"
    assert f"Your token was refused: {refusal_of(api, token)}" in texts(at.warning)
    assert "Signed in as" not in signed_in_as(at)


def test_answers_cached_for_one_token_are_not_shown_to_another(api, admin_token, make_user):
    """Two browser sessions of one dashboard process share its caches."""
    admin = api.get("/users/me").json()
    viewer, viewer_token = make_user("viewer")
    first = sign_in(open_page("jobs"), admin_token)  # fills the caches
    assert f"Signed in as **{admin['name']}** (admin)" in signed_in_as(first)

    second = AppTest.from_file(str(APP), default_timeout=60)  # the caches kept
    second.switch_page("app_pages/jobs.py")
    sign_in(second.run(), viewer_token)
    assert not second.exception
    assert f"Signed in as **{viewer}** (viewer)" in signed_in_as(second)
    assert "You are signed in as a viewer" in texts(second.info)


def test_a_viewer_sees_no_submit_cancel_or_score_again(idle_jobs, monkeypatch):
    _, token = idle_jobs["viewer"]
    jobs = idle_jobs["jobs"]
    monkeypatch.setenv("DETLAB_API_TOKEN", token)
    at = open_page("jobs")
    assert not at.exception and not at.error, texts(at.error)
    assert "You are signed in as a viewer: submitting jobs and importing runs needs the " in (
        texts(at.info)
    )
    assert not at.tabs
    assert not [b for b in at.button if b.label.startswith(("Submit", "Import"))]
    assert not [b for b in at.button if b.label == "Cancel"]
    labels = [link.proto.label for link in at.get("page_link")]
    assert any(label.startswith(f"#{jobs['own-queued']} ") for label in labels)  # still listed

    at = open_page("run", job=jobs["own-finished"])
    assert not at.exception and not at.error, texts(at.error)
    assert "for the job's owner or an admin) computes them" in texts(at.info)
    assert not [b for b in at.button if b.label == "Score again"]


def test_a_member_cancels_and_scores_again_only_their_own_jobs(api, idle_jobs, monkeypatch):
    member, token = idle_jobs["member"]
    other, _ = idle_jobs["other"]
    jobs = idle_jobs["jobs"]
    monkeypatch.setenv("DETLAB_API_TOKEN", token)
    at = open_page("jobs")
    assert not at.exception and not at.error, texts(at.error)
    assert at.text_input(key="finetune-name")  # a member may submit
    keys = {b.key for b in at.button}
    assert f"cancel-{jobs['own-queued']}" in keys
    assert f"cancel-{jobs['other-queued']}" not in keys
    assert f"by {other}" in texts(at.caption)  # whom to ask instead

    # (AppTest reruns the whole page on the click, where a browser reruns the fragment the
    # button is in: the page's fragment-scoped rerun then fails, after the cancel)
    at.button(key=f"cancel-{jobs['own-queued']}").click().run()
    assert api.get(f"/jobs/{jobs['own-queued']}").json()["status"] == JobStatus.cancelled.value

    # the history: filtered to the member's own jobs
    at = open_page("jobs")
    at.selectbox(key="jobs-owner").select("me").run()
    history = at.dataframe[0].value
    assert set(history["owner"]) == {member}
    assert {"access-own-queued", "access-own-finished"} <= set(history["name"])

    at = open_page("run", job=jobs["own-finished"])
    assert not at.exception and not at.error, texts(at.error)
    assert at.button(key="run-rescore")
    at = open_page("run", job=jobs["other-finished"])
    assert not at.exception and not at.error, texts(at.error)
    assert not [b for b in at.button if b.label == "Score again"]
