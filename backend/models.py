"""Every table, imported in one place for Alembic and the tests."""

from backend.datasets.models import Dataset
from backend.db import Base
from backend.evaluations.models import Evaluation, ImageError, ImageResult
from backend.jobs.models import Job, MetricPoint
from backend.weights.models import Weights

__all__ = [
    "Base",
    "Dataset",
    "Evaluation",
    "ImageError",
    "ImageResult",
    "Job",
    "MetricPoint",
    "Weights",
]
