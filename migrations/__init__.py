"""Alembic migrations of the perfusion-hub registry (located through this package's path)."""
