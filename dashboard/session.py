"""The token a browser session is signed in with, kept in `st.session_state` only.

Nothing is written to a file, a cookie or the URL: closing the tab forgets the token. Until a
session signs in or out, it uses the token in `DETLAB_API_TOKEN` when one is set (a demo, the
tests); after an explicit sign-out, or a refusal of that token, it no longer does.
"""

from __future__ import annotations

import os

import streamlit as st

from dashboard.client import ApiError, describe_detail

__all__ = ["TOKEN_ENV", "refusal", "refuse", "sign_in", "sign_out", "token"]

TOKEN_ENV = "DETLAB_API_TOKEN"
TOKEN_KEY = "detlab-token"
# set by a sign-out or a refused token: the environment's token is not used again
SIGNED_OUT_KEY = "detlab-signed-out"
REFUSAL_KEY = "detlab-refusal"


def token() -> str | None:
    """The session's token; else the environment's, unless this session signed out."""
    kept = st.session_state.get(TOKEN_KEY)
    if kept:
        return kept
    if st.session_state.get(SIGNED_OUT_KEY):
        return None
    return os.environ.get(TOKEN_ENV, "").strip() or None


def sign_in(secret: str) -> None:
    """Keep a token the API accepted for the rest of this browser session."""
    st.session_state[TOKEN_KEY] = secret
    st.session_state.pop(SIGNED_OUT_KEY, None)
    st.session_state.pop(REFUSAL_KEY, None)


def sign_out() -> None:
    """Forget the session's token; the sign-in form is shown until another is given."""
    st.session_state.pop(TOKEN_KEY, None)
    st.session_state.pop(REFUSAL_KEY, None)
    st.session_state[SIGNED_OUT_KEY] = True


def refuse(err: ApiError) -> None:
    """Forget a token the API refused (401) and say why on the sign-in form."""
    sign_out()
    st.session_state[REFUSAL_KEY] = describe_detail(err.detail)


def refusal() -> str | None:
    """Why the API refused the session's last token, if it did."""
    return st.session_state.get(REFUSAL_KEY)
