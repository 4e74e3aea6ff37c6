"""Storage: the SQL registry (SQLAlchemy 2.0 + Alembic) and the content-addressed blob store."""
