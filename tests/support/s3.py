"""Pytest fixtures for the s3 service used by the tests (registered in conftest.py)."""
