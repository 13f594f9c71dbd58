"""Request filters of access: a token before anything else, JSON bodies only, and no server
paths in what non-admins read.

- `RequireToken` refuses a request without a bearer token (401) before its body is read, and a
  state-changing request whose body is not JSON (or a multipart upload) with 415: a web page on
  another site can send a form or text/plain POST without asking, but not these (the
  browser asks the API first, and CORS stays closed unless DETLAB_CORS_ORIGINS names origins).
- `HideServerPaths` rewrites, in JSON and text answers to non-admins, every path under a data
  root as relative to it (the form the API accepts back) and the artifact and home folders as
  `<artifacts>` and `<home>`. The access rule of the route says who called (`request.state`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.config import Settings, get_settings
from backend.limits import send_error
from backend.users.models import Role

__all__ = ["ConfiguredCors", "HideServerPaths", "PUBLIC_PATHS", "RequireToken", "path_hider"]

# what anyone may fetch: the health check and the API's own documentation
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_TYPES = (b"application/json", b"multipart/form-data")


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


class RequireToken:
    """Pure ASGI middleware: 401 without a bearer token, 415 for a body that is not JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # a CORS preflight carries no token by design
            await self.app(scope, receive, send)
            return
        if not _header(scope, b"authorization").lower().startswith(b"bearer "):
            await send_error(
                send,
                401,
                "this route needs a token: send the header 'Authorization: Bearer <token>'; an "
                "admin creates one with `detlab-admin create-token USER` or POST /tokens",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if scope["method"] in STATE_CHANGING:
            has_body = _header(scope, b"content-length") not in (b"", b"0") or _header(
                scope, b"transfer-encoding"
            )
            media = _header(scope, b"content-type").split(b";")[0].strip().lower()
            if has_body and media not in BODY_TYPES:
                shown = media.decode("latin-1") or "none"
                await send_error(
                    send,
                    415,
                    f"a request body of type {shown!r} is not accepted; send application/json "
                    "(multipart/form-data for an upload)",
                    [],
                )
                return
        await self.app(scope, receive, send)


class ConfiguredCors:
    """CORS for the origins in DETLAB_CORS_ORIGINS; with none, browsers keep other sites' pages
    from calling the API (no CORS headers are ever sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: dict[tuple[str, ...], ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = tuple(get_settings().cors_origins)
        if not origins or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cors = self._cors.get(origins)
        if cors is None:
            cors = self._cors[origins] = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
            )
        await cors(scope, receive, send)


def path_hider(settings: Settings) -> Callable[[bytes], bytes]:
    """A function that rewrites the server's paths in a text, as non-admins see them."""
    assert settings.artifact_root is not None
    shown: dict[str, str] = {
        str(settings.home): "<home>",
        str(settings.artifact_root): "<artifacts>",
    }
    for root in settings.data_roots:
        shown[str(root)] = ""
    roots = sorted(shown, key=len, reverse=True)  # a root inside another is matched first
    # a root followed by "/" (a path under it) or by something that cannot continue a name
    pattern = re.compile(
        b"(" + b"|".join(re.escape(r.encode()) for r in roots) + rb")(/|(?![\w.\-]))"
    )

    def replace(match: re.Match[bytes]) -> bytes:
        label = shown[match.group(1).decode()]
        if match.group(2) == b"/":
            return (label + "/").encode() if label else b""
        return (label or "<data root>").encode()

    return lambda text: pattern.sub(replace, text)


class HideServerPaths:
    """Pure ASGI middleware: answers to a non-admin carry no absolute server path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._hiders: dict[int, Callable[[bytes], bytes]] = {}

    def _hider(self) -> Callable[[bytes], bytes]:
        settings = get_settings()  # per request: the settings in force (tests change them)
        hider = self._hiders.get(id(settings))
        if hider is None:
            hider = self._hiders[id(settings)] = path_hider(settings)
        return hider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def filtered_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                role = scope.get("state", {}).get("user_role")
                media = dict(message.get("headers", [])).get(b"content-type", b"")
                textual = media.startswith((b"application/json", b"text/"))
                if role is None or role == Role.admin or not textual:
                    await send(message)
                else:
                    start = message  # held until the body is whole
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = self._hider()(b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, filtered_send)
