"""Discovery modes: which window a creation cycle asks a job type for, which discovered
products it leaves for a later cycle, and which it skips as known before anything is
inserted (docs/partner-guide.md, "Discovery").

- **The window** (``JobTemplate.DISCOVERY_MODE``): ``modified_since`` asks for the products
  dated from the discovery cursor (the newest job's input publication date; the lookback
  for a type with no job yet), less ``DISCOVERY_OVERLAP_SECONDS``, to now: a product dated
  before that is never seen. ``listing_diff`` asks for every product the type lists
  (from :data:`EVERYTHING`): a product dated before the cursor is found too.
- **Settling**: a product dated less than ``DISCOVERY_SETTLE_SECONDS`` before the cycle is
  left for a later one (a file may still be being written). Only the newest products
  settle, so the cursor never passes one of them.
- **Known products**: a discovered natural key that has a job is skipped here, in one
  lookup per cycle, before screening's survivors are staged: no job id, no insert. A known
  product whose input changed since its latest job (another input publication date or
  input listing) is reprocessed under a new ``reprocessing_context`` when the type sets
  ``REPROCESS_ON_CHANGE``, and skipped (logged) otherwise.

What is skipped is logged per product at debug level; creation logs the counts per cycle
and type (:func:`summary`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.types import Text

from joblife.config import Settings
from joblife.db.text import why_unstorable
from joblife.lifecycle.common import job_logger
from joblife.model import JobsToCreate, JobTemplate
from joblife.storage.keys import MAX_KEY_BYTES

log = job_logger("creation")

MODIFIED_SINCE = "modified_since"
LISTING_DIFF = "listing_diff"
DISCOVERY_MODES = (MODIFIED_SINCE, LISTING_DIFF)
#: The start of a ``listing_diff`` window: every product the type lists.
EVERYTHING = datetime(1970, 1, 1, tzinfo=UTC)
#: Used when the settings have no ``discovery_settle_seconds`` / ``discovery_overlap_seconds``.
DEFAULT_SETTLE_SECONDS = 2.0
DEFAULT_OVERLAP_SECONDS = 0.0
#: Product ids looked up per statement (a listing of millions is several statements).
LOOKUP_CHUNK = 50_000


@dataclass(frozen=True)
class DiscoveryPolicy:
    """How one job type is discovered (its class attributes, the settings filling in)."""

    mode: str
    settle: timedelta
    overlap: timedelta
    reprocess_on_change: bool


def discovery_policy(cls: type[JobTemplate], settings: Settings) -> DiscoveryPolicy:
    """The discovery policy of ``cls``; ValueError for an unknown mode or a negative time.
    (Read with defaults: a stand-in class with only what creation calls has none.)"""
    mode = getattr(cls, "DISCOVERY_MODE", MODIFIED_SINCE)
    if mode not in DISCOVERY_MODES:
        raise ValueError(
            f"{cls.__name__}.DISCOVERY_MODE is {mode!r}, not one of {', '.join(DISCOVERY_MODES)}"
        )
    return DiscoveryPolicy(
        mode,
        _seconds(cls, "DISCOVERY_SETTLE_SECONDS", settings, DEFAULT_SETTLE_SECONDS),
        _seconds(cls, "DISCOVERY_OVERLAP_SECONDS", settings, DEFAULT_OVERLAP_SECONDS),
        bool(getattr(cls, "REPROCESS_ON_CHANGE", False)),
    )


def _seconds(cls: type[JobTemplate], name: str, settings: Settings, default: float) -> timedelta:
    value = getattr(cls, name, None)
    if value is None:  # the setting (read defensively: older settings lack it)
        value = getattr(settings, name.lower(), default)
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{cls.__name__}.{name} must be a number of seconds >= 0, not {value!r}")
    return timedelta(seconds=value)


def window_start(
    policy: DiscoveryPolicy, cursor: datetime | None, now: datetime, lookback_hours: float
) -> datetime:
    """Where the cycle's discovery window starts (it ends at ``now``)."""
    if policy.mode == LISTING_DIFF:
        return EVERYTHING
    if cursor is None:
        return now - timedelta(hours=lookback_hours)
    return (cursor - policy.overlap).astimezone(UTC)  # the server may answer in its time zone


def hold_settling(job_type: str, found: JobsToCreate, now: datetime, settle: timedelta) -> int:
    """Remove from ``found`` the products dated less than ``settle`` before ``now`` (left
    for a later cycle); return how many."""
    if not settle:
        return 0
    limit = now - settle
    held = 0
    for jobs in (found.to_create, found.to_cancel):
        kept = []
        for job in jobs:
            published = instance_dict(job).get("input_publication_date")
            # A naive or missing date is not compared: insertion refuses or keeps it.
            if not _aware(published) or published < limit:
                kept.append(job)
                continue
            held += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s: %s left for a later cycle: dated %s, less than %s s ago (settling)",
                    job_type,
                    instance_dict(job).get("input_product_id"),
                    published.isoformat(),
                    f"{settle.total_seconds():g}",
                    extra={"job_type": job_type},
                )
        jobs[:] = kept
    return held


def _aware(value: Any) -> bool:
    return isinstance(value, datetime) and value.utcoffset() is not None


@dataclass
class KnownSorted:
    """A screened discovery without its known products."""

    to_create: list[JobTemplate] = field(default_factory=list)
    to_cancel: list[JobTemplate] = field(default_factory=list)
    #: The first history messages of refused jobs, re-keyed for the reprocessed ones.
    messages: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Skipped: their natural key has a job (changed inputs not reprocessed included).
    known: int = 0
    #: Known products whose input changed, kept under a new reprocessing context.
    reprocessed: int = 0
    #: Known products whose input changed, skipped (``REPROCESS_ON_CHANGE`` is off).
    changed_skipped: int = 0
    #: Known products whose change could not be judged, or whose new context cannot be
    #: stored: (the job's values, why). Each is that product's error, never its type's.
    failed: list[tuple[Mapping[str, Any], str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Latest:
    """The latest job (highest id) of a known product."""

    job_id: int
    published: datetime | None
    listing: dict[str, int] | None


# One probe of the unique index (job_type, input_product_id, reprocessing_context) per
# product, whatever the statistics say: OFFSET 0 keeps the LATERAL subquery a parameterised
# scan (pulled up into a join, the planner may scan every job of the type instead).
# Only the latest job's listing is compared (_change), so only its listing is read and
# sent: max() over the probe's rows (the product's jobs, no sort) picks it, and the CASE
# leaves the older jobs' listings (TOASTed JSON, perhaps megabytes each) untouched.
_KNOWN_JOBS = text(
    "SELECT p.product, k.reprocessing_context, k.id, k.input_publication_date, k.listing "
    "FROM unnest(:products) AS p(product) CROSS JOIN LATERAL ("
    "SELECT j.reprocessing_context, j.id, j.input_publication_date, "
    "CASE WHEN :listings AND j.id = max(j.id) OVER () THEN j.input_listing END AS listing "
    "FROM jobs j WHERE j.job_type = :job_type AND j.input_product_id = p.product OFFSET 0) k"
).bindparams(bindparam("products", type_=ARRAY(Text)))


def known_keys(
    session: Session, job_type: str, products: Iterable[str]
) -> dict[tuple[str, str], int]:
    """The jobs of type ``job_type`` of ``products`` (product ids): their ids by natural
    key (product id, reprocessing context). One statement per ``LOOKUP_CHUNK`` products."""
    return {
        (product, context): job_id
        for product, context, job_id, _, _ in _known_rows(session, job_type, products, False)
    }


def _known_rows(
    session: Session, job_type: str, products: Iterable[str], listings: bool
) -> Iterator[Any]:
    """Every job of ``job_type`` of ``products``: product, context, id, input publication
    date, and, if ``listings``, the input listing of each product's latest job (None on
    the other rows); one index probe per product."""
    for chunk in _chunks(products):
        params = {"job_type": job_type, "products": chunk, "listings": listings}
        yield from session.execute(_KNOWN_JOBS, params)


def _chunks(products: Iterable[str]) -> Iterator[list[str]]:
    """The distinct ``products`` in sorted lists of at most ``LOOKUP_CHUNK``."""
    ordered = sorted(set(products))
    for start in range(0, len(ordered), LOOKUP_CHUNK):
        yield ordered[start : start + LOOKUP_CHUNK]


def skip_known(
    session: Session,
    cls: type[JobTemplate],
    to_create: Sequence[JobTemplate],
    to_cancel: Sequence[JobTemplate],
    messages: Mapping[tuple[str, str], str],
    reprocess_on_change: bool,
) -> KnownSorted:
    """``to_create`` and ``to_cancel`` (screened: every value storable) without the
    products whose natural key has a job, looked up in ``session``; a known product whose
    input changed since its latest job is kept under :meth:`JobTemplate.changed_input_context`
    when ``reprocess_on_change``. Each skip is logged at debug level."""
    job_type = cls.JOB_NAME or cls.__name__
    exact, latest = _known(session, job_type, (*to_create, *to_cancel))
    result = KnownSorted(messages=dict(messages))
    debug = log.isEnabledFor(logging.DEBUG)
    for jobs, kept in ((to_create, result.to_create), (to_cancel, result.to_cancel)):
        for job in jobs:
            values = instance_dict(job)
            product: Any = values.get("input_product_id")
            context: str = values.get("reprocessing_context") or ""
            known_id = exact.get((product, context))
            if known_id is None:
                kept.append(job)
                continue
            last = latest[product]
            try:
                change = _change(values, last)
            except Exception as exc:  # values the type set: its product's error alone
                result.failed.append((values, f"its change could not be judged: {exc!r}"))
                continue
            if change is None:
                result.known += 1
                if debug:
                    log.debug(
                        "%s: %s skipped: known (job %d)",
                        job_type,
                        _name(product, context),
                        known_id,
                        extra={"job_type": job_type},
                    )
                continue
            if not reprocess_on_change:
                result.known += 1
                result.changed_skipped += 1
                if debug:
                    log.debug(
                        "%s: %s skipped: known (job %d); its input changed since job %d "
                        "(%s), not reprocessed: REPROCESS_ON_CHANGE is off",
                        job_type,
                        _name(product, context),
                        known_id,
                        last.job_id,
                        change,
                        extra={"job_type": job_type},
                    )
                continue
            try:
                new_context = job.changed_input_context()
            except Exception as exc:  # the type's hook: its product's error alone
                result.failed.append((values, f"changed_input_context() failed: {exc!r}"))
                continue
            if (
                not isinstance(new_context, str)
                or why_unstorable(new_context) is not None
                or len(new_context.encode()) > MAX_KEY_BYTES  # the unique index's limit
            ):
                result.failed.append(
                    (values, f"changed_input_context() gave {ascii(new_context)[:200]}")
                )
                continue
            if (product, new_context) in exact:  # that change has its job already
                result.known += 1
                if debug:
                    log.debug(
                        "%s: %s skipped: known (job %d)",
                        job_type,
                        _name(product, new_context),
                        exact[(product, new_context)],
                        extra={"job_type": job_type},
                    )
                continue
            job.reprocessing_context = new_context
            message = result.messages.pop((product, context), None)
            if message is not None:
                result.messages[(product, new_context)] = message
            result.reprocessed += 1
            kept.append(job)
            log.debug(
                "%s: %s changed since job %d (%s): reprocessed as context %r",
                job_type,
                product,
                last.job_id,
                change,
                new_context,
                extra={"job_type": job_type},
            )
    return result


def _known(
    session: Session, job_type: str, jobs: Sequence[JobTemplate]
) -> tuple[dict[tuple[str, str], int], dict[str, _Latest]]:
    """The jobs of the discovered products: their ids by natural key, and each product's
    latest job (its listing only when a discovered job has one to compare)."""
    products: list[str] = []
    listings = False
    for job in jobs:
        values = instance_dict(job)
        product = values.get("input_product_id")
        if isinstance(product, str):
            products.append(product)
        listings = listings or values.get("input_listing") is not None
    exact: dict[tuple[str, str], int] = {}
    latest: dict[str, _Latest] = {}
    for product, context, job_id, published, listing in _known_rows(
        session, job_type, products, listings
    ):
        exact[(product, context)] = job_id
        current = latest.get(product)
        if current is None or job_id > current.job_id:
            latest[product] = _Latest(job_id, published, listing)
    return exact, latest


def _change(values: Mapping[str, Any], last: _Latest) -> str | None:
    """How a discovered product differs from its latest job (None: it does not)."""
    published = values.get("input_publication_date")
    if (
        isinstance(published, datetime)
        and last.published is not None
        and published != last.published
    ):
        return f"dated {published.isoformat()}, was {last.published.isoformat()}"
    listing = values.get("input_listing")
    if listing is not None and last.listing is not None and listing != last.listing:
        return f"{len(listing)} listed objects differ from the {len(last.listing)} known"
    return None


def _name(product: Any, context: str) -> str:
    return f"{product} ({context})" if context else str(product)


def summary(
    job_type: str,
    listed: int,
    new: int,
    known: int,
    settling: int,
    *,
    reprocessed: int = 0,
    changed_skipped: int = 0,
    cancelled: int = 0,
    refused: int = 0,
) -> str:
    """The cycle's line for one type: ``h5repack: 12 products listed, 3 new, 9 known, 0 too
    recent (settling)``, then the other counts that are not zero."""
    line = (
        f"{job_type}: {listed} products listed, {new} new, {known} known, "
        f"{settling} too recent (settling)"
    )
    extras = [
        (reprocessed, "reprocessed (input changed)"),
        (changed_skipped, "known with a changed input, not reprocessed"),
        (cancelled, "created cancelled"),
        (refused, "refused"),
    ]
    return line + "".join(f", {count} {what}" for count, what in extras if count)
