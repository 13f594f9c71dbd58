"""DetLab's Streamlit dashboard: `streamlit run dashboard/app.py`. An HTTP client of the API."""
