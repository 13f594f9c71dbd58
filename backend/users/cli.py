"""`detlab-admin`: users and tokens from the command line, on the configured database.

The first admin is made here (the API needs a token before it answers anything). Each change
is written to the audit trail as made by "cli:<the shell's user>".
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import timedelta

from sqlalchemy.orm import Session

from backend.audit.service import record
from backend.config import SettingsError, get_settings
from backend.db import session_factory
from backend.errors import DomainError
from backend.migrate import upgrade_head
from backend.users import service
from backend.users.models import Role

__all__ = ["main"]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container's user)
        return "cli"


def _create_user(session: Session, args: argparse.Namespace) -> int:
    role = Role(args.role)
    try:
        user = service.create_user(session=session, name=args.name, role=role)
    except DomainError as exc:
        if args.exist_ok and exc.status_code == 409:
            user = service.get_user_by_name(session=session, name=args.name)
            print(f"user {user.name} exists already ({user.role.value})", file=sys.stderr)
            return 0
        raise
    detail = {"name": user.name, "role": role.value}
    record(
        session=session,
        user=None,
        user_name=_actor(),
        action="user.create",
        object_id=user.id,
        detail=detail,
    )
    print(
        f"created user {user.name} ({role.value}); give them a token with: "
        f"detlab-admin create-token {user.name}",
        file=sys.stderr,
    )
    return 0


def _create_token(session: Session, args: argparse.Namespace) -> int:
    user = service.get_user_by_name(session=session, name=args.user)
    expires = timedelta(days=args.expires_days) if args.expires_days else None
    token, secret = service.create_token(
        session=session, user=user, name=args.name, expires_in=expires
    )
    record(
        session=session,
        user=None,
        user_name=_actor(),
        action="token.create",
        object_id=token.id,
        detail={"for": user.name, "name": token.name},
    )
    when = f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "no expiry"
    print(
        f"token {token.id} ({token.name!r}, {when}) for {user.name} ({user.role.value}); "
        "it is shown this once and stored only as a hash:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def _revoke_token(session: Session, args: argparse.Namespace) -> int:
    token = service.revoke_token(session=session, token_id=args.token_id)
    holder = service.get_user(session=session, user_id=token.user_id)
    record(
        session=session,
        user=None,
        user_name=_actor(),
        action="token.revoke",
        object_id=token.id,
        detail={"for": holder.name, "name": token.name},
    )
    print(f"token {token.id} ({token.name!r}) of {holder.name} is revoked", file=sys.stderr)
    return 0


def _list_users(session: Session, args: argparse.Namespace) -> int:
    for user in service.list_users(session=session):
        state = "active" if user.active else "deactivated"
        print(f"{user.id}\t{user.name}\t{user.role.value}\t{state}")
    return 0


def _list_tokens(session: Session, args: argparse.Namespace) -> int:
    user_id = None
    if args.user:
        user_id = service.get_user_by_name(session=session, name=args.user).id
    names = {user.id: user.name for user in service.list_users(session=session)}
    for token in service.list_tokens(session=session, user_id=user_id):
        state = "revoked" if token.revoked_at else "active"
        used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never used"
        print(
            f"{token.id}\t{names.get(token.user_id)}\t{token.name}\t{token.prefix}…\t"
            f"{state}\t{used}"
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detlab-admin",
        description="Manage DetLab users and API tokens on the configured database "
        "(DETLAB_DATABASE_URL; the embedded SQLite file by default).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create_user = commands.add_parser("create-user", help="a new user")
    create_user.add_argument("name")
    create_user.add_argument("--role", choices=[r.value for r in Role], default="member")
    create_user.add_argument(
        "--exist-ok", action="store_true", help="a user of that name already there is no error"
    )
    create_user.set_defaults(run=_create_user)
    create_token = commands.add_parser(
        "create-token", help="a new token for USER, printed alone on stdout"
    )
    create_token.add_argument("user")
    create_token.add_argument("--name", default="cli", help="what the token is for")
    create_token.add_argument("--expires-days", type=float, help="days until it stops working")
    create_token.set_defaults(run=_create_token)
    revoke = commands.add_parser("revoke-token", help="refuse a token from now on")
    revoke.add_argument("token_id", type=int)
    revoke.set_defaults(run=_revoke_token)
    commands.add_parser("list-users", help="id, name, role, state").set_defaults(run=_list_users)
    list_tokens = commands.add_parser("list-tokens", help="tokens (never their secrets)")
    list_tokens.add_argument("user", nargs="?")
    list_tokens.set_defaults(run=_list_tokens)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    settings.prepare_folders()
    upgrade_head(settings.database_url)
    with session_factory()() as session:
        try:
            return int(args.run(session, args))
        except DomainError as exc:
            print(f"detlab-admin: {exc.message}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
