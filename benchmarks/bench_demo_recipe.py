"""Does the demo's fine-tune recipe make a model worth inspecting? Trains it from scratch on
the demo's shapes data, with the very spec scripts/demo.py submits (one source of truth),
and prints wall time, load average, bbox_mAP, bbox_mAP_50, the val curve and the share of
classification errors that fall inside the planted look-alike pairs (square/rectangle,
circle/ellipse), then whether the mAP50 target was met (exit status 1 when it was not).

    python benchmarks/bench_demo_recipe.py --out /tmp/demo-recipe
    python benchmarks/bench_demo_recipe.py --iterations 100          # a quick, test-sized run
    python benchmarks/bench_demo_recipe.py --set lr=0.04 --shapes max_objects=3   # explore
    python benchmarks/bench_demo_recipe.py --unset grad_clip      # a key at the spec's default

No API, worker or database: the mmdet config comes from worker/mmdet_config.py as the
worker builds it, and mmengine's Runner trains it on this machine's CPU (or a GPU if any).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.analysis.confusion import BACKGROUND_LABEL, confusion_matrix  # noqa: E402
from backend.analysis.engine import evaluate, summarize  # noqa: E402
from backend.datasets.shapes import generate_shapes  # noqa: E402
from backend.jobs.paths import JobPaths  # noqa: E402
from backend.jobs.spec import FinetuneSpec  # noqa: E402
from scripts.demo import FINETUNE, LOOK_ALIKE_PAIRS, MAP50_TARGET, SHAPES  # noqa: E402

# the explorer's default score cut for the confusion matrix
SCORE_THR = 0.3


def _assignments(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs, VALUE read as JSON where it parses (numbers, lists), else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"{pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _data(out: Path, shapes: dict[str, Any]) -> SimpleNamespace:
    """The demo's dataset (generated once per parameter set) as the config builder reads it."""
    tag = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:10]
    root = out / f"shapes-{tag}"
    if not (root / "annotations" / "val.json").is_file():
        generate_shapes(root, **shapes)
    train = json.loads((root / "annotations" / "train.json").read_text())
    return SimpleNamespace(
        train_ann=str(root / "annotations" / "train.json"),
        val_ann=str(root / "annotations" / "val.json"),
        train_images=str(root / "train"),
        val_images=str(root / "val"),
        stats={"categories": train["categories"], "train": {"images": len(train["images"])}},
    )


def _curve(work_dir: Path, interval: int) -> list[tuple[int, float]]:
    """(iteration, bbox_mAP_50) of each validation mmengine logged, one every interval."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not logs:
        return []
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines()]
    values = [float(row["coco/bbox_mAP_50"]) for row in rows if "coco/bbox_mAP_50" in row]
    return [(interval * (k + 1), value) for k, value in enumerate(values)]


def look_alike_share(labels: list[str], counts: list[list[int]]) -> tuple[int, int]:
    """(class-to-class errors inside a look-alike pair, all class-to-class errors)."""
    pairs = {frozenset(pair) for pair in LOOK_ALIKE_PAIRS}
    inside = total = 0
    for row, gt in enumerate(labels):
        for col, predicted in enumerate(labels):
            if gt == predicted or BACKGROUND_LABEL in (gt, predicted):
                continue
            total += counts[row][col]
            if frozenset((gt, predicted)) in pairs:
                inside += counts[row][col]
    return inside, total


def main(argv: list[str] | None = None) -> int:
    """Train the demo recipe once and report; exit 1 when bbox_mAP_50 misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="scratch folder (default: a new temp dir)")
    parser.add_argument("--iterations", type=int, help="override the recipe's iterations")
    parser.add_argument("--set", nargs="*", default=[], help="FINETUNE overrides, KEY=VALUE")
    parser.add_argument("--shapes", nargs="*", default=[], help="SHAPES overrides, KEY=VALUE")
    parser.add_argument(
        "--unset", nargs="*", default=[], help="FINETUNE keys to leave at the spec's default"
    )
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="demo-recipe-"))
    out.mkdir(parents=True, exist_ok=True)
    shapes = {**SHAPES, **_assignments(args.shapes)}
    recipe = {**FINETUNE, **_assignments(args.set)}
    for key in args.unset:
        if key not in recipe:
            raise SystemExit(f"--unset {key}: the recipe has no such key; it has {sorted(recipe)}")
        del recipe[key]
    if args.iterations:
        recipe["iterations"] = args.iterations
        recipe["eval_interval"] = min(recipe["eval_interval"], args.iterations)
        recipe["warmup_iters"] = min(recipe["warmup_iters"], args.iterations)
    dataset = _data(out, shapes)
    spec = FinetuneSpec.model_validate({**recipe, "dataset_id": 1, "init": "scratch"})

    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    import worker.coco_metric  # noqa: F401 - registers the val metric the config names
    from worker.mmdet_config import build_finetune_config

    register_all_modules(init_default_scope=True)
    paths = JobPaths(out / f"run-{time.strftime('%H%M%S')}")
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_finetune_config(spec, dataset=dataset, paths=paths)
    print(f"shapes: {json.dumps(shapes)}\nrecipe: {json.dumps(recipe)}", flush=True)
    load_before = os.getloadavg()
    start = time.monotonic()
    runner = Runner.from_cfg(cfg)
    runner.train()
    if not paths.predictions.is_file():  # the loop validates at its last iteration too
        runner.val()
    wall = time.monotonic() - start
    load_after = os.getloadavg()

    gt = json.loads(Path(dataset.val_ann).read_text())
    results = json.loads(paths.predictions.read_text())
    stats = summarize(evaluate(gt, results)).as_dict()
    labels, counts = confusion_matrix(gt, results, score_thr=SCORE_THR)
    inside, total = look_alike_share(labels, counts)
    map50 = stats["AP50"] or 0.0
    print(f"\nwork dir {paths.root}")
    print(f"wall time {wall:.0f} s for {spec.length} iterations, validations included")
    print(
        f"load average before {load_before[0]:.2f}, after (1/5/15 min) "
        f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} cores"
    )
    print(
        "val curve (iteration: bbox_mAP_50): "
        + ", ".join(
            f"{it}: {value:.3f}"
            for it, value in _curve(paths.work_dir, spec.eval_interval or spec.length)
        )
    )
    print(f"bbox_mAP {stats['AP'] or 0.0:.3f}  bbox_mAP_50 {map50:.3f}")
    print(f"confusion matrix at score >= {SCORE_THR}, IoU >= 0.5 (rows GT, columns predicted):")
    print("  " + " ".join(f"{label[:10]:>10}" for label in labels))
    for label, row in zip(labels, counts, strict=True):
        print(f"  {label[:10]:>10} " + " ".join(f"{n:>10}" for n in row))
    share = f"{inside / total:.0%}" if total else "n/a"
    print(f"classification errors inside look-alike pairs: {inside} of {total} ({share})")
    met = map50 >= MAP50_TARGET
    print(f"target bbox_mAP_50 >= {MAP50_TARGET}: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
