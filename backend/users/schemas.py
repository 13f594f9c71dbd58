"""User and token API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from backend.users.models import Role

__all__ = [
    "OWNER",
    "TokenCreate",
    "TokenCreated",
    "TokenRead",
    "UserCreate",
    "UserRead",
    "UserUpdate",
]

# the owner of a job, dataset or weights entry, by name: read from the model's `owner_name`
OWNER = Field(
    default=None,
    validation_alias=AliasChoices("owner_name", "owner"),
    description="the user who made it (null: made before DetLab had users)",
)

UserName = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$")
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: UserName
    role: Role = Role.member


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    active: bool | None = Field(default=None, description="false: the user's tokens are refused")


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    active: bool
    created_at: datetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="what the token is for")
    expires_days: float | None = Field(
        default=None, gt=0, le=3650, description="days until it stops working; none: never"
    )
    user: UserName | None = Field(
        default=None, description="admins only: make the token for this user (default: you)"
    )


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    name: str
    prefix: str = Field(description="the secret's first characters, to tell tokens apart")
    created_at: datetime
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="the secret: shown this once, stored only as a hash")
