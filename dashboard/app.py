"""The dashboard's entry point: `DETLAB_API_URL=http://... streamlit run dashboard/app.py`.

Every page needs a signed-in user: a token given on the sign-in form (kept for the browser
session), else the one in `DETLAB_API_TOKEN`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import access, cached, session, views
from dashboard.client import ApiError

st.set_page_config(page_title="DetLab", page_icon=":material/center_focus_strong:", layout="wide")

# The default page is served at "/"; the others at their url_path, e.g. /run?job=12.
page = st.navigation(
    [
        st.Page(
            "app_pages/leaderboard.py", title="Leaderboard", icon=":material/trophy:", default=True
        ),
        st.Page(
            "app_pages/jobs.py", title="Jobs", icon=":material/manufacturing:", url_path="jobs"
        ),
        st.Page(
            "app_pages/experiments.py",
            title="Experiments",
            icon=":material/grid_view:",
            url_path="experiments",
        ),
        st.Page(
            "app_pages/run.py", title="Run detail", icon=":material/monitoring:", url_path="run"
        ),
        st.Page(
            "app_pages/explorer.py",
            title="Predictions explorer",
            icon=":material/image_search:",
            url_path="explorer",
        ),
        st.Page(
            "app_pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"
        ),
        st.Page("app_pages/fleet.py", title="Fleet", icon=":material/dns:", url_path="fleet"),
    ],
    # signed out, the sign-in form is the only thing to see
    position="sidebar" if session.token() else "hidden",
)
st.sidebar.caption(f"API: `{cached.api_url()}`")
access.signed_in_user()

try:
    page.run()
except ApiError as err:
    # A page stops at the first failed read it cannot do without; say what and where.
    views.show_api_error(err, doing=f"show the {page.title.lower()} page")
