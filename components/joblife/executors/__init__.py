"""Executors: one interface (:class:`Executor`), a local and (later) a Nomad implementation."""

from joblife.executors.base import (
    ExecutionRequest,
    ExecutionState,
    ExecutionStatus,
    Executor,
    execution_token,
)
from joblife.executors.factory import build_executor

__all__ = [
    "ExecutionRequest",
    "ExecutionState",
    "ExecutionStatus",
    "Executor",
    "build_executor",
    "execution_token",
]
