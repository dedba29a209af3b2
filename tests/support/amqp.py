"""Pytest fixtures for the amqp service used by the tests (registered in conftest.py)."""
