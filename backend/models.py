"""Every table, imported in one place for Alembic and the tests."""

from backend.audit.models import AuditEvent
from backend.datasets.models import Dataset
from backend.db import Base
from backend.evaluations.models import Evaluation, ImageError, ImageResult
from backend.experiments.models import Experiment
from backend.jobs.models import Job, MetricPoint
from backend.leaderboard.models import LeaderboardVersion
from backend.users.models import ApiToken, User
from backend.weights.models import Weights
from backend.workers.models import Worker

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Base",
    "Dataset",
    "Evaluation",
    "Experiment",
    "ImageError",
    "ImageResult",
    "Job",
    "LeaderboardVersion",
    "MetricPoint",
    "User",
    "Weights",
    "Worker",
]
