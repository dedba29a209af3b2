"""Pytest fixtures for the containers service used by the tests (registered in conftest.py)."""
