"""Per-user quotas on submission, and server paths hidden from non-admins (issue 14)."""

from __future__ import annotations

import factories
import pytest

from backend.config import get_settings
from backend.jobs.models import JobStatus


@pytest.fixture
def settings_env(monkeypatch, request):
    """set(NAME=value, ...): DETLAB_* settings for this test only."""

    def set_(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"DETLAB_{name.upper()}", str(value))
        get_settings.cache_clear()

    request.addfinalizer(get_settings.cache_clear)  # runs after monkeypatch restores
    return set_


def _spec(dataset_id: int, **changes: object) -> dict:
    return {"dataset_id": dataset_id, "iterations": 10, **factories.TINY_TRAINING, **changes}


def test_past_the_active_jobs_quota_a_submission_is_a_429(db, client_as, dataset_id, settings_env):
    settings_env(max_active_jobs_per_user=2)
    member, secret = factories.user(db, role="member")
    other, _ = factories.user(db, role="member")
    factories.job(db, dataset_id=dataset_id, owner_id=other.id)  # another's jobs do not count
    factories.job(db, dataset_id=dataset_id, owner_id=member.id, status=JobStatus.succeeded)
    client = client_as(secret)
    assert client.post("/jobs", json=_spec(dataset_id)).status_code == 201
    # three replicates would make four
    replicates = client.post("/jobs", json=_spec(dataset_id, repeats=3))
    assert replicates.status_code == 429
    message = replicates.json()["detail"]["message"]
    assert "limit is 2 per user" in message and "DETLAB_MAX_ACTIVE_JOBS_PER_USER" in message
    assert client.post("/jobs", json=_spec(dataset_id)).status_code == 201
    refused = client.post("/jobs", json=_spec(dataset_id))
    assert refused.status_code == 429 and "you have 2 jobs queued or running" in refused.text
    # a cancelled one frees its place
    first = client.get("/jobs", params={"owner": "me"}).json()["items"][0]
    assert client.post(f"/jobs/{first['id']}/cancel").status_code == 200
    assert client.post("/jobs", json=_spec(dataset_id)).status_code == 201


def test_past_the_iterations_quota_a_job_is_a_422(db, client, dataset_id, settings_env):
    settings_env(max_iterations_per_job=100)
    assert client.post("/jobs", json=_spec(dataset_id, iterations=100)).status_code == 201
    refused = client.post("/jobs", json=_spec(dataset_id, iterations=101))
    assert refused.status_code == 422
    assert (
        "over the limit of 100" in refused.text and "DETLAB_MAX_ITERATIONS_PER_JOB" in refused.text
    )
    # an epoch run counts epochs x iterations per epoch: 48 train images at batch 2 is 24
    epochs = {k: v for k, v in _spec(dataset_id, epochs=5).items() if k != "iterations"}
    refused = client.post("/jobs", json=epochs)
    assert refused.status_code == 422 and "runs 120 iterations" in refused.text
    epochs["epochs"] = 4
    assert client.post("/jobs", json=epochs).status_code == 201


def test_a_pretraining_on_an_image_folder_counts_its_images(client, shapes, settings_env):
    settings_env(max_iterations_per_job=10)
    spec = {
        "kind": "pretrain",
        "image_folder": str(shapes.train_images),
        "epochs": 1,
        "batch_size": 2,
        "queue_length": 64,
    }
    refused = client.post("/jobs", json=spec)  # 48 images at batch 2: 24 iterations
    assert refused.status_code == 422 and "runs 24 iterations" in refused.text


def test_non_admins_see_paths_relative_to_the_data_root(
    db, client, client_as, dataset_id, data_root, shapes
):
    _, secret = factories.user(db, role="member")
    member = client_as(secret)
    root = str(data_root)
    absolute = client.get(f"/datasets/{dataset_id}").json()  # an admin sees where files are
    assert absolute["train_ann"].startswith(root)
    shown = member.get(f"/datasets/{dataset_id}")
    assert shown.status_code == 200 and root not in shown.text
    train_ann = shown.json()["train_ann"]
    assert train_ann == absolute["train_ann"].removeprefix(root + "/")
    # what a member sees is what the API takes back
    files = {k: shown.json()[k] for k in ("train_ann", "val_ann", "train_images", "val_images")}
    again = member.post("/datasets", json={"name": "relative", **files})
    assert again.status_code == 409 and "registered already" in again.text
    assert root not in again.text
    outside = member.post(
        "/datasets", json={"name": "x", **{**files, "train_ann": "/etc/passwd"}}
    ).text
    assert "outside the allowed data roots" in outside and root not in outside
    for page in ("/jobs", "/weights", "/leaderboard"):
        assert root not in member.get(page).text


def test_a_members_config_has_no_server_paths(db, client, client_as, dataset_id, lab_home):
    _, secret = factories.user(db, role="viewer")
    job = factories.job(
        db,
        dataset_id=dataset_id,
        config_text=(
            f"data_root = '{lab_home}/data/shapes'\nwork_dir = '{lab_home}/artifacts/jobs/1'\n"
        ),
    )
    shown = client_as(secret).get(f"/jobs/{job.id}/config").text
    assert str(lab_home) not in shown
    assert "data_root = 'shapes'" in shown and "work_dir = '<artifacts>/jobs/1'" in shown
    assert str(lab_home) in client.get(f"/jobs/{job.id}/config").text
