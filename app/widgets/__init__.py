"""Reusable renderers: Plotly figures and tables built from domain values."""
