"""Typed FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.db import get_lazy_session, get_session

__all__ = [
    "MAX_ID",
    "ImageId",
    "LazySessionDep",
    "Offset",
    "OptionalId",
    "RowId",
    "SessionDep",
    "SettingsDep",
]

# ids and offsets are database integers: a larger number is a 422 naming the parameter,
# never an overflow in the database
MAX_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
ImageId = Annotated[int, Path(ge=0, le=MAX_ID)]
OptionalId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]

# "function": the session is closed when the route's response is ready, before it is sent,
# so a slow client never holds a database connection
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
# a session that takes no slot and no connection until used (backend/db.py: get_lazy_session)
LazySessionDep = Annotated[Session, Depends(get_lazy_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
