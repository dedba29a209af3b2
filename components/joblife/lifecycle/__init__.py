"""The life-cycle services: creation, configuration, dispatch, monitor, and the
orchestrator that runs them. Each service cycle handles a bounded batch, claims its rows
with ``FOR UPDATE SKIP LOCKED`` and is safe to run in several replicas at once."""
