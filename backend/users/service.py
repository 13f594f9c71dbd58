"""Users and their API tokens: creation, look-up by token, revocation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import as_utc, utcnow
from backend.errors import Conflict, Invalid, NotFound, Unauthorized
from backend.users import callers
from backend.users.callers import Caller
from backend.users.models import ApiToken, Role, User

__all__ = [
    "TOKEN_PREFIX",
    "authenticate",
    "authenticate_token",
    "create_token",
    "create_user",
    "get_token",
    "get_user",
    "get_user_by_name",
    "hash_token",
    "list_tokens",
    "list_users",
    "revoke_token",
    "update_user",
]

# "dl_" tells a DetLab token apart in a config file or a leak scanner; 32 random bytes follow
TOKEN_PREFIX = "dl_"
TOKEN_BYTES = 32
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,99}$")
# last_used_at is written at most this often per token, so reads do not all become writes
TOUCH_INTERVAL = timedelta(seconds=60)


def hash_token(secret: str) -> str:
    """The SHA-256 stored for a token; the secret itself is never stored."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise Invalid(
            f"user name {name[:120]!r} is not accepted; use 1-100 letters, digits, '.', '_', "
            "'-' or '@', starting with a letter or digit"
        )
    return name


def create_user(*, session: Session, name: str, role: Role) -> User:
    """A new active user; 409 when the name is taken."""
    user = User(name=_check_name(name), role=role, active=True)
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a user named {name!r} exists already; choose another name") from None
    return user


def get_user(*, session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def get_user_by_name(*, session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}; list them with GET /users")
    return user


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def update_user(
    *, session: Session, user_id: int, role: Role | None = None, active: bool | None = None
) -> User:
    """Change a user's role or active flag; at least one active admin always remains."""
    user = get_user(session=session, user_id=user_id)
    new_role = role if role is not None else user.role
    new_active = active if active is not None else user.active
    if user.role == Role.admin and user.active and (new_role != Role.admin or not new_active):
        others = session.scalar(
            select(User.id).where(User.role == Role.admin, User.active, User.id != user.id)
        )
        if others is None:
            raise Conflict(f"{user.name} is the last active admin; make another user admin first")
    user.role, user.active = new_role, new_active
    session.commit()
    callers.clear_all()  # other processes hear of it from the database (migration 0014)
    return user


def create_token(
    *, session: Session, user: User | Caller, name: str, expires_in: timedelta | None = None
) -> tuple[ApiToken, str]:
    """A new token for user, and its secret: the only time the secret exists outside the
    caller's hands."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        expires_at=utcnow() + expires_in if expires_in is not None else None,
    )
    session.add(token)
    session.commit()
    return token, secret


def list_tokens(*, session: Session, user_id: int | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return list(session.scalars(query))


def get_token(*, session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token with id {token_id}")
    return token


def revoke_token(*, session: Session, token_id: int) -> ApiToken:
    """Revoke a token; the next request that carries it is refused."""
    token = get_token(session=session, token_id=token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()
        callers.clear_all()
    return token


def authenticate(*, session: Session, secret: str | None, now: datetime | None = None) -> User:
    """The active user holding secret, or Unauthorized saying why."""
    return authenticate_token(session=session, secret=secret, now=now)[1]


def authenticate_token(
    *, session: Session, secret: str | None, now: datetime | None = None
) -> tuple[ApiToken, User]:
    """The token that secret is, and its active user; or Unauthorized saying why."""
    if not secret:
        raise Unauthorized(
            "this route needs a token: send the header 'Authorization: Bearer <token>'; an "
            "admin creates one with `detlab-admin create-token USER` or POST /tokens"
        )
    digest = hash_token(secret)
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == digest)
    ).first()
    # the row was found by its hash; comparing the digests again takes the same time whatever
    # they share, so a failed guess learns nothing from how long the refusal took
    if row is None or not hmac.compare_digest(row[0].token_hash, digest):
        raise Unauthorized("the token is not known; check it, or ask an admin for a new one")
    token, user = row
    now = now or utcnow()
    if token.revoked_at is not None:
        raise Unauthorized(f"the token {token.name!r} was revoked; ask an admin for a new one")
    expires_at, last_used_at = as_utc(token.expires_at), as_utc(token.last_used_at)
    if expires_at is not None and expires_at <= now:
        raise Unauthorized(f"the token {token.name!r} expired; ask an admin for a new one")
    if not user.active:
        raise Unauthorized(f"user {user.name} is deactivated; ask an admin")
    if last_used_at is None or now - last_used_at >= TOUCH_INTERVAL:
        session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        session.commit()
    return token, user
