"""Time of the worst-images query ("images of job J with a classification error, worst first")
over 5,000 analysed images, on Postgres or the SQLite default: the stored per-image counts
answer it in SQL. (A class or confusion-cell filter counts from the job's predictions file
instead, about 0.8 s once per job at 500k predictions, then cached; this script has no file.)

    python benchmarks/bench_worst_images.py --database-url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from backend.db import make_engine
from backend.evaluations import images_service
from backend.evaluations.models import ImageError, ImageResult
from backend.jobs.models import Job, JobKind, JobStatus
from backend.migrate import upgrade_head
from backend.models import Dataset

ERRORS = ("classification", "localization", "both", "duplicate", "background", "missed")


def _fresh_database(admin_url: str | None) -> tuple[str, str | None]:
    if admin_url is None:
        return f"sqlite:///{tempfile.mkdtemp()}/bench.db", None
    name = f"detlab_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="a Postgres admin URL; default: a SQLite file")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=20, help="jobs with analysed images")
    args = parser.parse_args()
    url, created = _fresh_database(args.database_url)
    upgrade_head(url)
    engine = make_engine(url)
    rng = random.Random(0)
    with Session(engine) as session:
        dataset = Dataset(
            name="bench",
            train_ann="-",
            val_ann="-",
            train_images="-",
            val_images="-",
            stats={"categories": [{"id": i, "name": f"class{i}"} for i in range(1, 11)]},
        )
        session.add(dataset)
        session.flush()
        jobs = [
            Job(kind=JobKind.finetune, status=JobStatus.succeeded, dataset_id=dataset.id, spec={})
            for _ in range(args.jobs)
        ]
        session.add_all(jobs)
        session.flush()
        for job in jobs:
            rows, errors = [], []
            for image_id in range(args.images):
                badness = rng.random() * 10
                rows.append(
                    dict(
                        job_id=job.id,
                        image_id=image_id,
                        file_name=f"{image_id}.jpg",
                        n_gt=7,
                        n_pred=100,
                        tp=5,
                        classification=1,
                        localization=1,
                        both=0,
                        duplicate=2,
                        background=80,
                        missed=1,
                        badness=badness,
                    )
                )
                for error in rng.sample(ERRORS, 3):
                    errors.append(
                        dict(
                            job_id=job.id,
                            image_id=image_id,
                            error_type=error,
                            category_id=rng.randint(1, 10),
                            badness=badness,
                        )
                    )
            session.execute(insert(ImageResult), rows)
            session.execute(insert(ImageError), errors)
        session.commit()
        if engine.dialect.name == "postgresql":
            session.execute(text("ANALYZE"))
        target = jobs[len(jobs) // 2].id
        timings = []
        for _ in range(50):
            started = time.perf_counter()
            listing = images_service.list_images(
                session=session,
                job_id=target,
                error_type="classification",
                sort="worst",
                limit=24,
                offset=0,
            )
            timings.append((time.perf_counter() - started) * 1000)
        items, total = listing.items, listing.total
        assert items and listing.selected[items[0].image_id] >= listing.selected[items[-1].image_id]
    engine.dispose()
    print(
        f"{engine.dialect.name}: worst-images query (error_type filter, 24 of "
        f"{total} matching, {args.images} images per job, {args.jobs} jobs): "
        f"median {statistics.median(timings):.1f} ms, p95 "
        f"{sorted(timings)[int(len(timings) * 0.95)]:.1f} ms"
    )
    if created and args.database_url:
        admin = make_engine(args.database_url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{created}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
