"""Scaling out without processes: GPU selection and locks, claims that fit a worker's free
GPUs, and the config of a multi-process job. (The real workers: test_scale_out_e2e.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import factories
import pytest

from backend.jobs import service as job_service
from backend.jobs.models import JobStatus
from backend.jobs.paths import JobPaths
from backend.jobs.spec import FinetuneSpec
from worker.devices import Gpu, WorkerDevices, cuda_environment, discover_gpus
from worker.distributed import World
from worker.mmdet_config import build_finetune_config
from worker.outcomes import JobFailed
from worker.training import apply_world

FOUR = [Gpu(index=str(i), name="NVIDIA H200", memory_mb=143771) for i in range(4)]


def test_the_gpus_a_worker_is_given_are_checked_against_the_host(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert discover_gpus("", found=FOUR) == FOUR
    assert [g.index for g in discover_gpus("2,0", found=FOUR)] == ["2", "0"]
    assert discover_gpus("none", found=FOUR) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert [g.index for g in discover_gpus("", found=FOUR)] == ["1", "3"]
    with pytest.raises(
        ValueError, match=r"names GPU 7, which this host does not have; its GPUs: 0"
    ):
        discover_gpus("0,7", found=FOUR)
    with pytest.raises(ValueError, match="nvidia-smi lists no GPU"):
        discover_gpus("0", found=[])


def test_a_job_sees_exactly_its_gpus_numbered_as_nvidia_smi_does():
    assert cuda_environment(["2", "3"]) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2,3",
    }
    assert cuda_environment(["cpu"])["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees no GPU
    assert cuda_environment(None) == {}


def test_cpu_slots_share_the_cores_between_their_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert WorkerDevices(gpus=[], cpu_slots=2).threads_per_job(8) == 4
    assert WorkerDevices(gpus=[], cpu_slots=3).threads_per_job(2) == 1  # never none
    assert WorkerDevices(gpus=[], cpu_slots=1).threads_per_job(8) is None  # torch's default
    assert WorkerDevices(gpus=FOUR, cpu_slots=2).threads_per_job(8) is None
    # --concurrency decides how many jobs run side by side, whatever the slots say
    assert WorkerDevices(gpus=[], cpu_slots=2).threads_per_job(8, jobs=4) == 2
    assert WorkerDevices(gpus=[], cpu_slots=2).threads_per_job(8, jobs=1) is None
    assert WorkerDevices(gpus=[], cpu_slots=1).threads_per_job(8, jobs=2) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the operator's word stands
    assert WorkerDevices(gpus=[], cpu_slots=2).threads_per_job(8) is None


@pytest.mark.parametrize("concurrency", [None, 1])
def test_a_celery_child_of_a_two_slot_cpu_worker_takes_its_share_of_the_cores(
    tmp_path, concurrency
):
    """A child's torch threads: the cores shared by the slots, or by the pool's size when the
    worker was started with --concurrency (celeryd_after_setup gives it, before the fork): one
    job at a time keeps torch's default, every core."""
    code = (
        "import os, torch, types\n"
        "from celery.signals import celeryd_after_setup\n"
        "from worker import celery_app\n"
        "before = torch.get_num_threads()\n"
        f"if {concurrency!r}:\n"
        "    celeryd_after_setup.send(\n"
        f"        sender='w@h', conf={{}},\n"
        f"        instance=types.SimpleNamespace(concurrency={concurrency!r}),\n"
        "    )\n"
        "celery_app._prepare_child()\n"
        "print(len(os.sched_getaffinity(0)), before, torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env |= {
        "DETLAB_HOME": str(tmp_path),
        "DETLAB_DATABASE_URL": f"sqlite:///{tmp_path}/detlab.db",
        "DETLAB_WORKER_GPUS": "none",
        "DETLAB_WORKER_CPU_SLOTS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    cores, before, after = (int(v) for v in done.stdout.split()[-3:])
    expected = cores if concurrency == 1 else max(1, cores // 2)
    assert after == expected and before == cores


def test_two_claimers_on_one_host_never_hold_the_same_gpu(tmp_path):
    first = WorkerDevices(gpus=FOUR, lock_folder=tmp_path)
    second = WorkerDevices(gpus=FOUR, lock_folder=tmp_path)
    with first.claiming() as free:
        assert free == ["0", "1", "2", "3"]
        first.keep(["0", "1"])
    with second.claiming() as free:
        assert free == ["2", "3"]  # first still holds 0 and 1
        second.keep(["2"])
    with first.claiming() as free:
        assert free == ["3"]
        first.keep([])
    first.release()
    with second.claiming() as free:
        assert free == ["0", "1", "3"]
        second.keep([])


def test_a_gpu_lock_dies_with_the_process_that_held_it(tmp_path):
    """However the job's process ends, the kernel frees its GPUs."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from worker.devices import Gpu, WorkerDevices\n"
            f"d = WorkerDevices(gpus=[Gpu('0', 'x', 1)], lock_folder=__import__('pathlib')"
            f".Path({str(tmp_path)!r}))\n"
            "with d.claiming() as free: d.keep(free)\n"
            "print(free, flush=True); time.sleep(60)",
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "['0']"
    mine = WorkerDevices(gpus=[Gpu("0", "x", 1)], lock_folder=tmp_path)
    with mine.claiming() as free:
        assert free == []
    holder.kill()
    holder.wait()
    with mine.claiming() as free:
        assert free == ["0"]
        mine.keep([])


def test_a_job_waiting_for_more_gpus_does_not_block_younger_ones_that_fit(db, dataset_id):
    big = factories.job(db, dataset_id=dataset_id, gpus=4)
    small = factories.job(db, dataset_id=dataset_id)
    claim = job_service.claim(session=db, queue="detlab", host="w@a", free_gpus=["1", "3"])
    assert claim is not None and claim.job.id == small.id and claim.job.devices == ["1"]
    assert db.get(type(big), big.id).status == JobStatus.queued  # still first in line
    claim = job_service.claim(session=db, queue="detlab", host="w@b", free_gpus=list("0123"))
    assert claim is not None and claim.job.id == big.id
    assert claim.job.devices == ["0", "1", "2", "3"]
    job_service.finish(session=db, job_id=big.id, status=JobStatus.succeeded, token=claim.token)
    db.refresh(claim.job)
    assert claim.job.devices is None  # released with the end of the attempt


def test_a_cpu_worker_takes_jobs_up_to_its_process_limit(db, dataset_id):
    factories.job(db, dataset_id=dataset_id, gpus=8)
    assert job_service.claim(session=db, queue="detlab", host="c", max_processes=4) is None
    claim = job_service.claim(session=db, queue="detlab", host="c", max_processes=8)
    assert claim is not None and claim.job.gpus == 8 and claim.job.devices == ["cpu"]
    assert job_service.waiting(session=db, queue="detlab") == []


@pytest.fixture()
def spec_dataset(tmp_path):
    return factories.config_dataset(tmp_path, ("circle", "square"))


def test_a_two_process_config_states_its_world_and_scales_the_lr(spec_dataset, tmp_path):
    spec = FinetuneSpec(dataset_id=1, iterations=10, lr=0.01, batch_size=4, gpus=2, init="scratch")
    cfg = build_finetune_config(spec, dataset=spec_dataset, paths=JobPaths(tmp_path))
    apply_world(cfg, World(size=2, devices=["cpu"]), lr=0.01, batch_size=4, norm="bn")
    assert cfg.launcher == "pytorch" and cfg.world_size == 2
    assert cfg.env_cfg.dist_cfg == {"backend": "gloo"}
    assert cfg.model_wrapper_cfg == {"type": "MMDistributedDataParallel", "device_ids": None}
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.02)
    assert cfg.lr_scaling.total_batch_size == 8 and cfg.lr_scaling.lr_per_process == 0.01

    on_gpus = build_finetune_config(spec, dataset=spec_dataset, paths=JobPaths(tmp_path))
    apply_world(on_gpus, World(size=2, devices=["0", "1"]), lr=0.01, batch_size=4, norm="syncbn")
    assert on_gpus.env_cfg.dist_cfg == {"backend": "nccl"} and "model_wrapper_cfg" not in on_gpus

    one = build_finetune_config(spec, dataset=spec_dataset, paths=JobPaths(tmp_path))
    apply_world(one, World(size=1, devices=["0"]), lr=0.01, batch_size=4, norm="bn")
    assert one.launcher == "none" and one.optim_wrapper.optimizer.lr == 0.01


def test_syncbn_across_cpu_processes_is_refused_with_the_reason(spec_dataset, tmp_path):
    spec = FinetuneSpec(dataset_id=1, iterations=10, gpus=2, init="scratch", norm="syncbn")
    cfg = build_finetune_config(spec, dataset=spec_dataset, paths=JobPaths(tmp_path))
    with pytest.raises(JobFailed, match="norm syncbn needs CUDA GPUs"):
        apply_world(cfg, World(size=2, devices=["cpu"]), lr=0.02, batch_size=2, norm="syncbn")


def test_gpus_outside_one_to_eight_is_a_422_naming_the_field(client, dataset_id):
    body = {"dataset_id": dataset_id, "iterations": 10, "gpus": 9}
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert "gpus" in response.text and "8" in response.text
    assert client.get("/jobs/options").json()["max_gpus"] == 8
