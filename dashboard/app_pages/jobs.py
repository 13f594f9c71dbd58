"""Jobs: what runs now (live progress, ETA, cancel), a form to submit a job (or a replicate
group: one job per seed), and the history.

The choices of the form come from `GET /jobs/options`; a refused job shows the API's own
validation message. Viewers see no forms; members cancel their own jobs, admins any.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import access, cached, views
from dashboard.client import ApiError, describe_detail

HISTORY_PAGE = 50
HISTORY_COLUMNS = [
    "run",
    "name",
    "owner",
    "kind",
    "status",
    "progress",
    "dataset",
    "group",
    "spec",
    "created",
    "took",
    "error",
]
INIT_CHOICES = {
    "checkpoint": "checkpoint file",
    "weights_id": "registered weights",
}


@st.fragment(run_every=2)
def active_jobs() -> None:
    """Running jobs with a progress bar and ETA, then the queue; refreshed every 2 s."""
    try:
        running = cached.jobs(live=True, status="running", limit=100)["items"]
        queued = cached.jobs(live=True, status="queued", limit=100)["items"]
    except ApiError as err:
        views.show_api_error(err, doing="load the running and queued jobs")
        return
    active_ids = {job["id"] for job in running + queued}
    finished = st.session_state.get("jobs-active-ids", set()) - active_ids
    st.session_state["jobs-active-ids"] = active_ids
    if finished:  # the history below changed: rerun the whole page, not only this part
        cached.forget_lists()
        st.rerun(scope="app")

    if not active_ids:
        st.caption("No job is running or queued.")
    for job in running:
        job_row(job, bar=True)
    # the API's place in line (the order workers claim jobs in), not the order of ids
    for job in sorted(queued, key=lambda j: (j["queue"], j["queue_position"] or 0)):
        job_row(job, bar=False, position=job["queue_position"])


def job_row(job: dict[str, Any], *, bar: bool, position: int | None = None) -> None:
    label, progress, cancel = st.columns([3, 6, 1], vertical_alignment="center")
    label.page_link("app_pages/run.py", label=views.job_label(job), query_params={"job": job["id"]})
    if bar:
        progress.progress(job["progress"] or 0.0, text=progress_text(job))
    else:
        progress.caption(f"queued, position {position} in queue {job['queue']}")
    if job["cancel_requested"]:
        cancel.caption("stopping…")
    elif not access.can_change(job):
        if job.get("owner"):  # whom to ask
            cancel.caption(f"by {job['owner']}")
    elif cancel.button("Cancel", key=f"cancel-{job['id']}"):
        try:
            cached.cancel_job(job["id"])
        except ApiError as err:
            st.warning(f"Job #{job['id']} was not cancelled: {describe_detail(err.detail)}")
        else:
            st.toast(f"Cancel requested for job #{job['id']}")
            st.rerun(scope="fragment")


def progress_text(job: dict[str, Any]) -> str:
    total = job["progress_total"]
    if not total:
        return "starting…"
    text = f"iteration {job['progress_iter']:,} / {total:,} ({job['progress']:.0%})"
    if job["eta_seconds"] is not None:
        text += f" · ETA {views.format_duration(job['eta_seconds'])}"
    return text


def history_table(options: dict[str, Any], datasets: dict[int, str]) -> None:
    status_col, kind_col, dataset_col, owner_col = st.columns(4)
    status = status_col.selectbox(
        "Status", [None, *options["status"]], format_func=lambda s: s or "any", key="jobs-status"
    )
    kind = kind_col.selectbox(
        "Kind", [None, *options["kind"]], format_func=lambda k: k or "any", key="jobs-kind"
    )
    dataset = dataset_col.selectbox(
        "Dataset",
        [None, *datasets],
        format_func=lambda d: datasets[d] if d else "any",
        key="jobs-dataset",
    )
    owner = owner_col.selectbox(
        "Owner", [None, "me"], format_func=lambda o: o or "anyone", key="jobs-owner"
    )
    page = st.session_state.get("jobs-page", 1)
    listing = cached.jobs(
        status=status,
        kind=kind,
        dataset=dataset,
        owner=owner,
        limit=HISTORY_PAGE,
        offset=(page - 1) * HISTORY_PAGE,
    )
    if not listing["items"]:
        st.info("No job matches these filters." if listing["total"] else "No job submitted yet.")
        return
    small = {"width": "small"}
    st.dataframe(
        history_frame(listing["items"], datasets),
        hide_index=True,
        width="stretch",
        # every column fits a 1440 px wide window: the spec's axes in one column, long
        # texts (the spec, an error) cut to their column, whole on hover
        column_order=HISTORY_COLUMNS,
        column_config={
            "run": st.column_config.LinkColumn("Run", display_text=r"job=(\d+)", **small),
            "owner": st.column_config.TextColumn("owner", **small),
            "kind": st.column_config.TextColumn("kind", **small),
            "status": st.column_config.TextColumn("status", **small),
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0, max_value=1, **small
            ),
            "group": st.column_config.TextColumn("group", **small),
            "spec": st.column_config.TextColumn("spec", width="medium"),
            "created": st.column_config.DatetimeColumn("created", format="MM-DD HH:mm", **small),
            "took": st.column_config.TextColumn("took", **small),
            "error": st.column_config.TextColumn("error", width="medium"),
        },
    )
    pages = -(-listing["total"] // HISTORY_PAGE)
    st.caption(
        f"{listing['total']:,} jobs, newest first. group: the replicate group a job belongs to "
        "(named by its first job), when it was submitted with several seeds."
    )
    if pages > 1:
        st.pagination(pages, key="jobs-page")


def history_frame(items: list[dict[str, Any]], datasets: dict[int, str]) -> pd.DataFrame:
    def took(job: dict[str, Any]) -> str:
        if not job["started_at"] or not job["finished_at"]:
            return "–"
        started = datetime.fromisoformat(job["started_at"])
        finished = datetime.fromisoformat(job["finished_at"])
        return views.format_duration((finished - started).total_seconds())

    return pd.DataFrame(
        {
            "run": [f"run?job={job['id']}" for job in items],
            "name": [job["name"] or "" for job in items],
            "owner": [job.get("owner") or "" for job in items],
            "kind": [job["kind"] for job in items],
            "status": [job["status"] for job in items],
            "progress": [job["progress"] for job in items],
            "dataset": [datasets.get(job["dataset_id"], job["dataset_id"]) for job in items],
            "group": [f"#{job['group_id']}" if job["group_id"] else "" for job in items],
            "detector": [job["spec"].get("detector", "") for job in items],
            "backbone": [job["spec"].get("backbone", "") for job in items],
            # a pretraining's method says what it does (and a box-domain one's start)
            "init / method": [
                views.init_label(job["spec"]["init"])
                if job["kind"] != "pretrain" and "init" in job["spec"]
                else pretrain_label(job["spec"])
                for job in items
            ],
            "spec": [spec_text(job["spec"]) for job in items],
            "created": pd.to_datetime([job["created_at"] for job in items], utc=True),
            "took": [took(job) for job in items],
            "error": [job["error"] or "" for job in items],
        }
    )


def spec_text(spec: dict[str, Any]) -> str:
    """A job's spec in one cell: detector · backbone · init, or method · backbone."""
    if "init" in spec:
        parts = [spec.get("detector", ""), spec.get("backbone", ""), views.init_label(spec["init"])]
    else:
        parts = [spec.get("method", ""), spec.get("backbone", "")]
    return " · ".join(str(part) for part in parts if part)


def finetune_form(options: dict[str, Any], datasets: dict[int, str]) -> dict[str, Any] | None:
    """The fine-tune form; returns the spec to submit when it is submitted.

    Its widgets are keyed "finetune-<spec field>".
    """
    defaults = options["defaults"]
    init_kinds = [i if isinstance(i, str) else next(iter(i)) for i in options["init"]]

    def pick(place: DeltaGenerator, label: str, field: str, choices: list, **kwargs: Any) -> Any:
        index = choices.index(defaults[field]) if defaults.get(field) in choices else 0
        return place.selectbox(label, choices, index=index, key=f"finetune-{field}", **kwargs)

    def number(place: DeltaGenerator, label: str, field: str, **kwargs: Any) -> Any:
        return place.number_input(label, value=defaults[field], key=f"finetune-{field}", **kwargs)

    with st.form("submit-finetune"):
        dataset_id = st.selectbox(
            "Dataset", list(datasets), format_func=datasets.get, key="finetune-dataset_id"
        )
        name = st.text_input("Name (optional)", key="finetune-name")
        columns = st.columns(4)
        values: dict[str, Any] = {
            "detector": pick(columns[0], "Detector", "detector", options["detector"]),
            "backbone": pick(columns[1], "Backbone", "backbone", options["backbone"]),
            "neck": pick(
                columns[2],
                "Neck",
                "neck",
                [None, *options["neck"]],
                format_func=lambda n: n or "default for the backbone",
            ),
            "norm": pick(
                columns[3],
                "Norm",
                "norm",
                [None, *options["norm"]],
                format_func=lambda n: n or "default for the init",
            ),
        }
        init_col, checkpoint_col, prefix_col, weights_col = st.columns([1, 2, 1, 1])
        init = pick(
            init_col,
            "Backbone init",
            "init",
            init_kinds,
            format_func=lambda i: INIT_CHOICES.get(i, i),
        )
        checkpoint = checkpoint_col.text_input(
            "Checkpoint path (for a checkpoint file)",
            placeholder="/data/pretrain/moco.pth",
            key="finetune-checkpoint",
        )
        prefix = prefix_col.text_input(
            "Key prefix to strip", placeholder="module.encoder_q.", key="finetune-prefix"
        )
        weights_id = weights_choice(weights_col) if "weights_id" in init_kinds else None

        columns = st.columns(4)
        unit = columns[0].radio(
            "Schedule in", ["epochs", "iterations"], horizontal=True, key="finetune-unit"
        )
        length = columns[1].number_input("Length", value=12, step=1, key="finetune-length")
        width = columns[2].number_input(
            "Image width", value=defaults["image_scale"][0], step=32, key="finetune-width"
        )
        height = columns[3].number_input(
            "Image height", value=defaults["image_scale"][1], step=32, key="finetune-height"
        )
        columns = st.columns(5)
        values["batch_size"] = number(columns[0], "Batch size", "batch_size")
        values["optimizer"] = pick(columns[1], "Optimizer", "optimizer", options["optimizer"])
        values["lr"] = number(columns[2], "Learning rate", "lr", format="%.5f", step=0.001)
        values["seed"] = number(columns[3], "Seed", "seed", step=1)
        values["repeats"] = number(
            columns[4],
            "Replicates (seeds)",
            "repeats",
            min_value=1,
            max_value=options["max_repeats"],
            step=1,
            help="Train this spec once per seed (seed, seed + 1, …): the runs form one "
            "replicate group, which the leaderboard can show as one row (mean and spread over "
            "the seeds).",
        )
        with st.expander("More settings"):
            left, middle, right = st.columns(3)
            values["weight_decay"] = number(
                left, "Weight decay", "weight_decay", format="%.6f", step=1e-5
            )
            values["momentum"] = number(middle, "Momentum", "momentum")
            values["warmup_iters"] = number(
                right,
                "Warm-up iterations",
                "warmup_iters",
                step=1,
                placeholder="fits the run: min(500, a tenth)",
            )
            values["warmup_ratio"] = number(
                left, "Warm-up ratio", "warmup_ratio", format="%.4f", step=1e-4
            )
            values["data_fraction"] = number(
                middle, "Share of the train split", "data_fraction", step=0.1
            )
            values["lr_schedule"] = pick(
                left, "LR schedule after warm-up", "lr_schedule", options["lr_schedule"]
            )
            values["grad_clip"] = number(
                middle,
                "Clip gradient norm at",
                "grad_clip",
                min_value=0.001,
                placeholder="no clipping",
            )
            values["gpus"] = number(
                right,
                "GPUs (processes)",
                "gpus",
                min_value=1,
                max_value=options["max_gpus"],
                step=1,
                help="Train across this many GPUs of one host (gloo processes on a CPU "
                "worker). Batch size and learning rate are per GPU: the total batch and the "
                "lr are multiplied by this number.",
            )
            values["eval_interval"] = number(
                right,
                "Evaluate every (epochs or iterations)",
                "eval_interval",
                step=1,
                placeholder="fits the run: about 10 times",
            )
            values["checkpoint_interval"] = (
                left.number_input(
                    "Checkpoint every (0: as evaluation)",
                    value=defaults["checkpoint_interval"] or 0,
                    step=1,
                    key="finetune-checkpoint_interval",
                )
                or None
            )
            values["num_workers"] = number(middle, "Loader workers", "num_workers", step=1)
            values["roi_samples_per_image"] = number(
                right, "RoIs per image (two-stage)", "roi_samples_per_image", step=16
            )
            values["test_proposals_per_image"] = number(
                left, "Test proposals per image", "test_proposals_per_image", step=100
            )
            values["amp"] = middle.checkbox(
                "Mixed precision (amp)", value=defaults["amp"], key="finetune-amp"
            )
        if not st.form_submit_button("Submit fine-tune job", type="primary"):
            return None

    values["init"] = init
    if init == "checkpoint":
        values["init"] = {"checkpoint": checkpoint, "prefix": prefix}
    elif init == "weights_id":
        values["init"] = {"weights_id": weights_id}
    values["image_scale"] = [width, height]
    spec = without_defaults(values, defaults)
    spec.update({"kind": "finetune", "dataset_id": dataset_id, unit: int(length)})
    if name.strip():
        spec["name"] = name.strip()
    return spec


def pretrain_label(spec: dict[str, Any]) -> str:
    """A pretraining's method; a box-domain one's detector and start too."""
    method = spec.get("method", "")
    if spec.get("detector"):
        return f"{method} ({spec['detector']} from {views.init_label(spec.get('init', 'scratch'))})"
    return method


def pretrain_form(options: dict[str, Any], datasets: dict[int, str]) -> dict[str, Any] | None:
    """The self-supervised pretraining form; returns the spec when it is submitted."""
    defaults = options["pretrain_defaults"]
    methods, backbones = options["method"], options["pretrain_backbone"]
    box_methods = options.get("box_domain_methods", [])
    with st.form("submit-pretrain"):
        name = st.text_input("Name (optional)", key="pretrain-name")
        method_col, backbone_col, source_col = st.columns([1, 1, 2])
        values: dict[str, Any] = {
            "method": method_col.selectbox(
                "Method", methods, index=methods.index(defaults["method"])
            ),
            "backbone": backbone_col.selectbox(
                "Backbone", backbones, index=backbones.index(defaults["backbone"])
            ),
        }
        source = source_col.radio(
            "Images",
            ["dataset", "folder"],
            horizontal=True,
            format_func={"dataset": "a dataset's train split", "folder": "a folder"}.get,
        )
        dataset_col, folder_col = st.columns(2)
        dataset_id = dataset_col.selectbox(
            "Dataset", list(datasets), format_func=datasets.get, key="pretrain-dataset"
        )
        folder = folder_col.text_input(
            "Image folder (under a data root)", placeholder="/data/unlabelled"
        )
        unit_col, length_col, batch_col, size_col = st.columns(4)
        unit = unit_col.radio(
            "Schedule in", ["epochs", "iterations"], horizontal=True, key="pretrain-unit"
        )
        length = length_col.number_input("Length", value=200, step=1, key="pretrain-length")
        numbers = {
            "batch_size": ("Batch size", batch_col, 1),
            "image_size": ("Crop size", size_col, 32),
            "lr": ("Learning rate", None, 0.01),
            "weight_decay": ("Weight decay", None, 1e-5),
            "momentum_coefficient": ("Key encoder EMA step", None, 1e-4),
            "queue_length": ("Queue length", None, 256),
            "feature_dim": ("Feature size", None, 8),
            "temperature": ("Temperature", None, 0.05),
            "seed": ("Seed", None, 1),
            "num_workers": ("Loader workers", None, 1),
            "gpus": ("GPUs (processes)", None, 1),
        }
        more = st.columns(4)
        for position, (field, (label, column, step)) in enumerate(numbers.items()):
            place = column or more[position % 4]
            values[field] = place.number_input(
                label,
                value=defaults[field],
                step=step,
                key=f"pretrain-{field}",
                format="%.6g" if isinstance(defaults[field], float) else "%d",
            )
        values["amp"] = st.checkbox(
            "Mixed precision (amp)", value=defaults["amp"], key="pretrain-amp"
        )
        st.caption(
            f"Box-domain methods ({', '.join(box_methods)}) pretrain a whole detector on "
            "unsupervised proposals, from a backbone start:"
        )
        detector_col, start_col, weights_col, proposals_col = st.columns(4)
        detector = detector_col.selectbox(
            "Detector", options.get("box_pretrain_detector", []), key="pretrain-detector"
        )
        start = start_col.selectbox(
            "Backbone start", ["scratch", "imagenet", "weights_id"], key="pretrain-start"
        )
        start_weights = weights_col.number_input(
            "Weights id", min_value=1, value=1, step=1, key="pretrain-start-weights"
        )
        proposals = proposals_col.number_input(
            "Proposals per image",
            value=defaults.get("proposals_per_image", 32),
            step=1,
            key="pretrain-proposals",
        )
        if not st.form_submit_button("Submit pretraining job", type="primary"):
            return None
    if values["method"] in box_methods:
        values["detector"] = detector
        values["init"] = {"weights_id": int(start_weights)} if start == "weights_id" else start
        values["proposals_per_image"] = int(proposals)
    spec = without_defaults(values, defaults)
    spec.update({"kind": "pretrain", unit: int(length)})
    if source == "dataset":
        spec["dataset_id"] = dataset_id
    else:
        spec["image_folder"] = folder
    if name.strip():
        spec["name"] = name.strip()
    return spec


def without_defaults(spec: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings that differ from the API's defaults. The others are not sent, so the API
    applies its own rules to them (e.g. a RoI setting that a one-stage detector refuses)."""
    return {key: value for key, value in spec.items() if value != defaults.get(key)}


def weights_choice(place: DeltaGenerator) -> int | None:
    """One of the registered weights; None when none is registered yet."""
    names = views.weights_names()
    return place.selectbox(
        "Weights (for registered weights)",
        list(names),
        format_func=lambda i: f"#{i} {names[i]}",
        placeholder="none registered yet",
        key="finetune-weights_id",
    )


def evaluate_form(options: dict[str, Any], datasets: dict[int, str]) -> dict[str, Any] | None:
    """Score a checkpoint on a dataset's val split: a DetLab run's own model, one of DetLab's
    detector x backbone choices, or a config of the installed mmdet, with a checkpoint file."""
    defaults = options["evaluate_defaults"]
    with st.form("submit-evaluate"):
        dataset_id = st.selectbox(
            "Dataset (its val split is scored)",
            list(datasets),
            format_func=datasets.get,
            key="evaluate-dataset_id",
        )
        name = st.text_input("Name (optional)", key="evaluate-name")
        model = st.radio(
            "Model",
            ["a DetLab run", "detector and backbone", "mmdet config"],
            horizontal=True,
            key="evaluate-model",
        )
        left, middle, right = st.columns(3)
        source_job = left.number_input(
            "Run id (a succeeded fine-tune)", value=None, step=1, key="evaluate-source_job_id"
        )
        detector = middle.selectbox("Detector", options["detector"], key="evaluate-detector")
        backbone = right.selectbox("Backbone", options["backbone"], key="evaluate-backbone")
        config = left.text_input(
            "mmdet config name", placeholder="faster-rcnn_r50_fpn_1x_coco", key="evaluate-config"
        )
        checkpoint = middle.text_input(
            "Checkpoint path (under a data root or the artifact root)",
            placeholder="/data/checkpoints/faster_rcnn_r50_fpn_1x_coco.pth",
            key="evaluate-checkpoint",
        )
        batch_size = right.number_input(
            "Images per batch",
            value=defaults["batch_size"],
            min_value=1,
            step=1,
            key="evaluate-batch_size",
        )
        if not st.form_submit_button("Submit evaluate job", type="primary"):
            return None
    spec: dict[str, Any] = {
        "kind": "evaluate",
        "dataset_id": dataset_id,
        "batch_size": int(batch_size),
    }
    if model == "a DetLab run":
        spec["source_job_id"] = int(source_job) if source_job is not None else None
    else:
        spec["checkpoint"] = checkpoint.strip() or None
        if model == "detector and backbone":
            spec.update(detector=detector, backbone=backbone)
        else:
            spec["mmdet_config"] = config.strip() or None
    if name.strip():
        spec["name"] = name.strip()
    return spec


def import_form(datasets: dict[int, str]) -> None:
    """Upload a COCO results file made elsewhere: it is scored at once and joins the board."""
    with st.form("import-predictions"):
        dataset_id = st.selectbox(
            "Dataset (the file's image and category ids are its val split's)",
            list(datasets),
            format_func=datasets.get,
            key="import-dataset_id",
        )
        left, right = st.columns(2)
        name = left.text_input("Name", placeholder="r50 from detectron2", key="import-name")
        model = right.text_input(
            "What made it (optional)", placeholder="detectron2 R50-FPN 3x", key="import-model"
        )
        upload = st.file_uploader(
            "COCO results JSON: a list of {image_id, category_id, bbox, score}",
            type=["json"],
            key="import-file",
        )
        if not st.form_submit_button("Import and score", type="primary"):
            return
    if upload is None or not name.strip():
        st.error("Choose a results file and give the run a name.")
        return
    try:
        with st.spinner("Scoring the predictions…"):
            run = cached.import_run(
                dataset_id=dataset_id,
                name=name.strip(),
                source={"model": model.strip()} if model.strip() else {},
                filename=upload.name,
                content=upload.getvalue(),
            )
    except ApiError as err:
        if err.status in (413, 422):
            st.error(f"The API refused this file:\n\n{describe_detail(err.detail)}")
        else:
            views.show_api_error(err, doing="import the predictions")
        return
    job, evaluation = run["job"], run["evaluation"]
    st.success(f"Run #{job['id']} imported: bbox mAP {views.format_ap(evaluation['bbox_mAP'])}")
    st.page_link("app_pages/run.py", label="Open the run", query_params={"job": job["id"]})


def json_form(options: dict[str, Any], datasets: dict[int, str]) -> dict[str, Any] | None:
    """Any kind of job the API accepts, written as its JSON spec."""
    kind = st.selectbox("Kind", options["kind"], key="json-kind")
    defaults = options["defaults" if kind == "finetune" else f"{kind}_defaults"]
    length = {} if kind == "evaluate" else {"epochs": 12}
    example = {"kind": kind, "dataset_id": next(iter(datasets), 1), **length, **defaults}
    with st.form("submit-json"):
        text = st.text_area(
            "Spec (JSON)", value=json.dumps(example, indent=2), height=360, key=f"json-spec-{kind}"
        )
        if not st.form_submit_button("Submit job"):
            return None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        st.error(f"The spec is not valid JSON: {exc}")
        return None
    if not isinstance(spec, dict):
        st.error('The spec must be a JSON object, e.g. {"dataset_id": 1, "epochs": 12}.')
        return None
    return spec


def submit(spec: dict[str, Any]) -> None:
    try:
        job = cached.submit_job(spec)
    except ApiError as err:
        if err.status == 422:
            st.error(f"The API refused this job:\n\n{describe_detail(err.detail)}")
        else:
            views.show_api_error(err, doing="submit the job")
        return
    if job["group_id"] is None:
        st.success(f"Job #{job['id']} queued: {views.job_label(job)}")
    else:
        members = cached.jobs(group=job["group_id"], limit=len(job["group_job_ids"]))["items"]
        queued = ", ".join(
            f"#{member['id']} (seed {member['spec']['seed']})"
            for member in sorted(members, key=lambda member: member["id"])
        )
        st.success(f"{len(members)} jobs queued as replicate group #{job['group_id']}: {queued}.")
    for warning in job.get("warnings") or []:
        st.warning(f"Job #{job['id']}: {warning}")
    st.page_link(
        "app_pages/run.py", label=f"Open job #{job['id']}", query_params={"job": job["id"]}
    )


st.title("Jobs")
options = cached.job_options()
datasets = {d["id"]: d["name"] for d in cached.datasets()}

st.subheader("Running and queued")
active_jobs()

st.subheader("Submit a job")
if not access.can_submit():
    st.info(
        f"You are signed in as a {cached.me()['role']}: submitting jobs and importing runs "
        "needs the member role; ask an admin."
    )
elif not datasets:
    st.info("Register a dataset (`POST /datasets`) before submitting jobs.")
else:
    finetune_tab, pretrain_tab, evaluate_tab, import_tab, json_tab = st.tabs(
        [
            "Fine-tune",
            "Pretrain",
            "Evaluate a checkpoint",
            "Import predictions",
            "Spec as JSON (any kind)",
        ]
    )
    with finetune_tab:
        spec = finetune_form(options, datasets)
    with pretrain_tab:
        spec = pretrain_form(options, datasets) or spec
    with evaluate_tab:
        spec = evaluate_form(options, datasets) or spec
    with import_tab:
        import_form(datasets)
    with json_tab:
        spec = json_form(options, datasets) or spec
    if spec is not None:
        submit(spec)

st.subheader("History")
history_table(options, datasets)
