"""Operations: health checks, Prometheus metrics, statistics, stale jobs and clean-up.

Each module does one job and is used by the ``joblife health|metrics|stats|jobs stale|
cleanup`` commands (``joblife.cli.ops_commands``); :func:`joblife.ops.metrics.
start_metrics_server` is what ``joblife run`` calls to serve metrics on its port.
"""
