"""Who is signed in and what they may do: the sign-in form, "Signed in as" with a sign-out in
the sidebar, and the checks that hide the controls a user's role cannot use.

The API decides every request by itself (a control shown by mistake gets a 403 that names the
owner); the checks here only keep the screen to what the user can do.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

from dashboard import cached, session, views
from dashboard.client import ApiError, describe_detail

__all__ = ["can_change", "can_submit", "sign_in_form", "signed_in_user"]

# The API's roles that create jobs, runs, datasets and weights, and change what they own;
# an admin also changes what others own. Viewers only read.
CREATING_ROLES = ("member", "admin")
ADMIN_ROLE = "admin"
MARKDOWN_SIGNS = re.compile(r"([\\`*_{}\[\]<>#|~])")


def signed_in_user() -> dict[str, Any] | None:
    """The signed-in user, said in the sidebar; without a token, the sign-in form in place of
    the page (the script stops). None when the API cannot say who it is (e.g. it did not
    answer): the page then says what failed when it reads."""
    if session.token() is None:
        sign_in_form()
        st.stop()
    try:
        user = cached.me()
    except ApiError:
        st.sidebar.caption("Signed in with a token; the API could not say whose.")
        return None
    name = MARKDOWN_SIGNS.sub(r"\\\1", user["name"])
    st.sidebar.markdown(f"Signed in as **{name}** ({user['role']})")
    st.sidebar.button(
        "Sign out", icon=":material/logout:", key="sign-out", on_click=session.sign_out
    )
    return user


def sign_in_form() -> None:
    """A token, checked with `GET /users/me` and kept for this browser session only."""
    st.title("Sign in to DetLab")
    refused = session.refusal()
    if refused:
        st.warning(f"Your token was refused: {refused}\n\nSign in again.")
    st.caption(
        "Paste your API token. It is kept in this browser tab's session only, never in a file, "
        "a cookie or the address; an admin creates tokens with `detlab-admin create-token USER`."
    )
    with st.form("sign-in"):
        secret = st.text_input("API token", type="password", key="sign-in-token")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    secret = secret.strip()
    if not secret:
        st.error("Paste a token first: the API needs one for every page.")
        return
    try:
        cached.check_token(secret)
    except ApiError as err:
        if err.status == 401:
            st.error(f"The API refused this token: {describe_detail(err.detail)}")
        else:
            views.show_api_error(err, doing="sign in")
        return
    session.sign_in(secret)
    st.rerun()


def can_submit() -> bool:
    """Whether the signed-in user may submit jobs and import runs (members and admins)."""
    return cached.me()["role"] in CREATING_ROLES


def can_change(job: dict[str, Any]) -> bool:
    """Whether the signed-in user may cancel or rescore `job`: an admin any, a member their
    own."""
    user = cached.me()
    if user["role"] == ADMIN_ROLE:
        return True
    return user["role"] in CREATING_ROLES and job.get("owner") == user["name"]
