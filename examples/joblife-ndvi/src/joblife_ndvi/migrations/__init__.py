"""The ndvi job type's Alembic revisions (found through the joblife.migrations entry point)."""
