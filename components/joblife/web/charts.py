"""Chart.js specs built from the dashboard's reads.

A spec is ``{type, labels, datasets, options}``: the page carries it as JSON in a
``<script type="application/json">`` block and ``static/app.js`` draws it on the canvas
naming that block (the Content-Security-Policy allows no inline script). Only numbers,
labels and static options go in: no callback can be expressed in JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from joblife.web.overview_reads import ThroughputBucket, TimelinessPoint

#: Dataset colours (readable on white, distinct for the common colour blindnesses).
COLORS = {
    "done": "#1a7f37",
    "internal_error": "#c4320a",
    "external_error": "#f79009",
    "p50": "#2457c5",
    "p90": "#7a5af8",
    "p99": "#dd2590",
    "max": "#667085",
    "target": "#c4320a",
}


def bucket_label(start: datetime, bucket: timedelta) -> str:
    """A bucket's start for an axis (UTC): the date and hour, the date alone for days."""
    if bucket >= timedelta(days=1):
        return start.strftime("%m-%d")
    return start.strftime("%m-%d %H:%M")


def _bar(label: str, data: Sequence[int], color: str, stack: str) -> dict[str, Any]:
    return {"label": label, "data": list(data), "backgroundColor": color, "stack": stack}


def _axes(y_title: str, stacked: bool = False) -> dict[str, Any]:
    return {
        "scales": {
            "x": {"stacked": stacked, "ticks": {"maxRotation": 0, "autoSkipPadding": 12}},
            "y": {
                "stacked": stacked,
                "beginAtZero": True,
                "title": {"display": True, "text": y_title},
            },
        },
        "plugins": {"legend": {"position": "bottom"}},
    }


def throughput_chart(buckets: Sequence[ThroughputBucket], bucket: timedelta) -> dict[str, Any]:
    """Jobs done per bucket, as bars."""
    return {
        "type": "bar",
        "labels": [bucket_label(b.start, bucket) for b in buckets],
        "datasets": [_bar("done", [b.done for b in buckets], COLORS["done"], "done")],
        "options": _axes("jobs done"),
    }


def failures_chart(buckets: Sequence[ThroughputBucket], bucket: timedelta) -> dict[str, Any]:
    """Jobs failed per bucket, internal and external errors stacked."""
    return {
        "type": "bar",
        "labels": [bucket_label(b.start, bucket) for b in buckets],
        "datasets": [
            _bar(
                "internal_error",
                [b.internal_error for b in buckets],
                COLORS["internal_error"],
                "failed",
            ),
            _bar(
                "external_error",
                [b.external_error for b in buckets],
                COLORS["external_error"],
                "failed",
            ),
        ],
        "options": _axes("jobs failed", stacked=True),
    }


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 3)


def _line(label: str, data: Sequence[float | None], color: str, **extra: Any) -> dict[str, Any]:
    return {
        "label": label,
        "data": list(data),
        "borderColor": color,
        "backgroundColor": color,
        "pointRadius": 2,
        "spanGaps": False,
        **extra,
    }


def timeliness_chart(
    points: Sequence[TimelinessPoint], bucket: timedelta, target: timedelta
) -> dict[str, Any]:
    """Input → output publication of one job type and priority per bucket, in hours: a line
    per percentile and the maximum (gaps where nothing was published), and the target as a
    dashed line."""
    target_hours = _hours(target.total_seconds())
    return {
        "type": "line",
        "labels": [bucket_label(p.start, bucket) if p.start else "" for p in points],
        "datasets": [
            _line("p50", [_hours(p.p50_seconds) for p in points], COLORS["p50"]),
            _line("p90", [_hours(p.p90_seconds) for p in points], COLORS["p90"]),
            _line("p99", [_hours(p.p99_seconds) for p in points], COLORS["p99"]),
            _line("max", [_hours(p.max_seconds) for p in points], COLORS["max"]),
            _line(
                "target",
                [target_hours] * len(points),
                COLORS["target"],
                borderDash=[6, 4],
                pointRadius=0,
                borderWidth=1,
            ),
        ],
        "options": _axes("hours to publish"),
    }
