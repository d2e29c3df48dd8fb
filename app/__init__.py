"""The Streamlit console: entrypoint, cached services, widgets. Pages live in ../pages."""
