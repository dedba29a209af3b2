"""Pytest fixtures for the nomad service used by the tests (registered in conftest.py)."""
