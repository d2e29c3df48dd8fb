"""The durable store (SQLAlchemy 2, SQLite by default, PostgreSQL in production).

Only this package may import SQLAlchemy. Its models, repositories and
migrations arrive with the store issue; the package exists now so that the
layer contracts in pyproject.toml cover it from the start.
"""
