"""DetLab settings: one class, read from DETLAB_* environment variables once."""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "get_settings"]

ACCEPTED_DATABASES = ("sqlite://", "postgresql://", "postgresql+psycopg://")
ACCEPTED_BROKERS = ("redis://", "rediss://", "filesystem://", "amqp://", "memory://")


class SettingsError(RuntimeError):
    """Raised when DETLAB_* settings are invalid; the message names the variable."""


class Settings(BaseSettings):
    """Every DetLab setting. Defaults need no server: a SQLite file and a folder broker."""

    model_config = SettingsConfigDict(env_prefix="DETLAB_", extra="ignore")

    home: Path = Field(default=Path("var"), description="Folder for embedded defaults")
    database_url: str = ""
    broker_url: str = ""
    artifact_root: Path | None = None
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    queue: str = Field(
        default="detlab",
        pattern=r"^[A-Za-z0-9_.\-]{1,100}$",
        description="broker queue the API sends jobs to and workers consume",
    )
    # A job that runs longer than this is redelivered to another worker.
    visibility_timeout_s: int = Field(default=7 * 24 * 3600, ge=3600)
    # A worker keeps retrying its database writes this long before it fails the job.
    db_grace_s: float = Field(default=600, ge=0, le=7 * 24 * 3600)

    # The API's database pool: one connection per request thread (DETLAB_API_THREADS), so no
    # request waits on the pool; the overflow serves the rest of the process.
    api_threads: int = Field(default=32, ge=1, le=1000)
    db_pool_size: int = Field(default=32, ge=1, le=1000)
    db_max_overflow: int = Field(default=8, ge=0, le=1000)
    db_pool_timeout_s: float = Field(default=10, gt=0, le=600)
    # How long an API process may keep a token's user without looking it up again; Postgres'
    # notifications end it at once when a user or token changes (0 looks up every request).
    token_cache_s: float = Field(default=30, ge=0, le=3600)
    # Requests in progress past this are answered 503 with Retry-After at once.
    max_requests_in_flight: int = Field(default=4096, ge=1, le=1_000_000)
    retry_after_s: int = Field(default=2, ge=1, le=3600)

    # Request and file size limits, in bytes.
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_annotation_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)

    # The queue's reconciler: a running job whose heartbeat is older than heartbeat_stale_s is
    # taken over; a queued job without a message is sent again. Workers beat every
    # heartbeat_interval_s and reconcile every reconcile_interval_s.
    # A submitted job expected to run longer than this on its queue's workers gets a warning.
    long_job_warning_s: float = Field(default=6 * 3600, gt=0)

    # Quotas per user: queued plus running jobs, and one job's length in iterations (an epoch
    # job counts epochs x iterations per epoch); past them a 429 or a 422 naming the limit.
    max_active_jobs_per_user: int = Field(default=50, ge=1, le=1_000_000)
    max_iterations_per_job: int = Field(default=2_000_000, ge=1)
    # An experiment queues at most this many jobs (cells x repeats).
    max_jobs_per_experiment: int = Field(default=500, ge=1, le=100_000)
    # Origins whose web pages may call the API from a browser (CORS); none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The GPUs a worker runs jobs on (`detlab-worker --gpus 0,1`): GPU indices as nvidia-smi
    # numbers them, "none" for a CPU worker, empty for CUDA_VISIBLE_DEVICES or every GPU found.
    worker_gpus: str = Field(default="", pattern=r"^(|none|\d{1,3}(,\d{1,3})*)$")
    # Jobs a CPU worker runs at once (a GPU worker runs up to one per GPU).
    worker_cpu_slots: int = Field(default=1, ge=1, le=64)

    heartbeat_interval_s: float = Field(default=10, gt=0, le=3600)
    heartbeat_stale_s: float = Field(default=120, gt=0, le=7 * 24 * 3600)
    reconcile_interval_s: float = Field(default=60, gt=0, le=24 * 3600)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.replace(",", ":").split(":") if part.strip()]
        if isinstance(value, list) and any(Path(str(v)).resolve() == Path("/") for v in value):
            raise ValueError("'/' is not accepted as a data root; name the folders that hold data")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for origin in value if isinstance(value, list) else []:
            if origin == "*" or not re.match(r"^https?://[^/\s]+$", str(origin)):
                raise ValueError(
                    f"{origin!r} is not accepted as an origin; give scheme://host[:port] "
                    "entries separated by commas (no '*': every origin would act for a "
                    "signed-in user)"
                )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if value and not value.startswith(ACCEPTED_DATABASES):
            raise ValueError(
                f"{value!r} is not accepted; use a URL starting with one of "
                f"{', '.join(ACCEPTED_DATABASES)}"
            )
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if value and not value.startswith(ACCEPTED_BROKERS):
            raise ValueError(
                f"{value!r} is not accepted; use a URL starting with one of "
                f"{', '.join(ACCEPTED_BROKERS)}"
            )
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.heartbeat_stale_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                f"DETLAB_HEARTBEAT_STALE_S ({self.heartbeat_stale_s:g}) must be at least three "
                f"DETLAB_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s:g}), or live jobs "
                "would be taken over"
            )
        self.home = self.home.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'detlab.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        self.artifact_root = (self.artifact_root or self.home / "artifacts").resolve()
        if not self.data_roots:
            self.data_roots = [self.home / "data"]
        self.data_roots = [root.resolve() for root in self.data_roots]
        return self

    @property
    def broker_folder(self) -> Path:
        """Folder used by the filesystem:// broker (one folder for in and out)."""
        return self.home / "broker"

    def prepare_folders(self) -> None:
        """Create the folders the embedded defaults write to."""
        assert self.artifact_root is not None
        for folder in (self.home, self.artifact_root, self.broker_folder, *self.data_roots):
            if folder == self.home or folder.is_relative_to(self.home):
                folder.mkdir(parents=True, exist_ok=True)


def load_settings() -> Settings:
    """Build settings from the environment, turning validation errors into one message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "settings"
            variable = f"DETLAB_{field.upper()}" if field != "settings" else "DETLAB_*"
            problems.append(f"{variable}: {error['msg']}")
        raise SettingsError("invalid DetLab settings:\n  " + "\n  ".join(problems)) from None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, validated once."""
    return load_settings()


if __name__ == "__main__":  # `python -m backend.config` prints the effective settings
    try:
        print(get_settings().model_dump_json(indent=2))
    except SettingsError as exc:
        sys.exit(str(exc))
