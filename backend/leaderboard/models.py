"""The leaderboard's version: one row whose number the database's triggers change whenever a
row the leaderboard reads changes (migrations/versions/0013_leaderboard_version.py)."""

from __future__ import annotations

from sqlalchemy import BigInteger
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import Base

__all__ = ["LeaderboardVersion"]


class LeaderboardVersion(Base):
    __tablename__ = "leaderboard_version"

    id: Mapped[int] = mapped_column(primary_key=True)  # always 1
    version: Mapped[int] = mapped_column(BigInteger)
