"""The job-type registry: which JobTemplate subclasses this installation knows.

Job types are found through the ``joblife.job_types`` entry-point group (a partner package
declares ``[project.entry-points."joblife.job_types"] mytype = "mypkg.jobs:MyJob"``) and the
``job_type_modules`` setting, or registered directly with :func:`register_job_type`. A class
is validated when it is registered; a missing or wrong attribute is refused with an error
that names the class and the attribute.

A type that cannot load (its module fails to import, its class is invalid) does not stop
the others: it is recorded (:func:`job_type_load_errors`), logged once, and left out of the
registry; ``joblife health`` and the metric ``joblife_job_type_load_errors`` report it.
"""

from __future__ import annotations

import importlib
import logging
import re
from datetime import timedelta
from importlib.metadata import entry_points

from joblife.config import Settings, get_settings
from joblife.model.flavors import flavor_catalogue
from joblife.model.template import JobTemplate

ENTRY_POINT_GROUP = "joblife.job_types"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_registry: dict[str, type[JobTemplate]] = {}
_entry_points_loaded = False
#: Job types that could not load, by name (an entry point's name, a module's, or a class's
#: JOB_NAME): the error in one line. Modules are kept apart as the setting may change.
_entry_point_errors: dict[str, str] = {}
_module_errors: dict[str, dict[str, str]] = {}

log = logging.getLogger("joblife.registry")


class JobTypeError(ValueError):
    """A job type is invalid, unknown or registered twice."""


def validate_job_type(cls: type, settings: Settings | None = None) -> None:
    """Raise :class:`JobTypeError` naming ``cls`` and the attribute if ``cls`` does not
    honour the JobTemplate contract."""
    name = getattr(cls, "__qualname__", repr(cls))

    def fail(attribute: str, problem: str) -> None:
        raise JobTypeError(f"job type {name}: {attribute} {problem}")

    if not (isinstance(cls, type) and issubclass(cls, JobTemplate)) or cls is JobTemplate:
        raise JobTypeError(f"job type {name}: must be a subclass of JobTemplate")
    table = cls.__dict__.get("__tablename__")
    if not isinstance(table, str) or not _IDENTIFIER.match(table) or table == "jobs":
        fail(
            "__tablename__",
            f"must name the type's own table (lower-case identifier), got {table!r}",
        )
    for attribute in ("JOB_NAME", "GET_JOBS_WITH_STATUS_PROCEDURE_NAME"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not _IDENTIFIER.match(value):
            fail(attribute, f"must be a lower-case identifier, got {value!r}")
    for attribute in ("INPUT_PRODUCT_TYPE", "NOMAD_JOB_NAME"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value.strip():
            fail(attribute, f"must be a non-empty string, got {value!r}")
    flavor = getattr(cls, "WORKER_FLAVOR_NAME", None)
    catalogue = flavor_catalogue(settings)
    if flavor not in catalogue:
        fail(
            "WORKER_FLAVOR_NAME",
            f"is {flavor!r}, not a known worker flavor ({', '.join(sorted(catalogue))})",
        )
    products = getattr(cls, "OUTPUT_PRODUCTS_LIST", None)
    if (
        not isinstance(products, list | tuple)
        or not products
        or not all(isinstance(p, str) and p for p in products)
        or len(set(products)) != len(products)
    ):
        fail(
            "OUTPUT_PRODUCTS_LIST", f"must be a non-empty list of distinct names, got {products!r}"
        )
    last = getattr(cls, "LAST_INSERTED_JOB", None)
    if last is not None and not isinstance(last, cls):
        fail("LAST_INSERTED_JOB", f"must be None or a {name}, got {type(last).__name__}")
    max_attempts = getattr(cls, "MAX_ATTEMPTS", None)
    if not isinstance(max_attempts, int) or max_attempts < 1:
        fail("MAX_ATTEMPTS", f"must be a positive integer, got {max_attempts!r}")
    timeout = getattr(cls, "DEPENDENCY_TIMEOUT", None)
    if not isinstance(timeout, timedelta) or timeout < timedelta(0):
        fail("DEPENDENCY_TIMEOUT", f"must be a non-negative timedelta, got {timeout!r}")
    identity = cls.__mapper__.polymorphic_identity
    if identity != cls.JOB_NAME:
        fail("JOB_NAME", f"is {cls.JOB_NAME!r} but the polymorphic identity is {identity!r}")


def register_job_type(
    cls: type[JobTemplate], settings: Settings | None = None
) -> type[JobTemplate]:
    """Validate and register ``cls``; usable as a class decorator. Registering the same
    class again is a no-op; another class with the same JOB_NAME is refused."""
    validate_job_type(cls, settings)
    existing = _registry.get(cls.JOB_NAME)  # type: ignore[arg-type]
    if existing is not None and existing is not cls:
        raise JobTypeError(
            f"job type {cls.__qualname__}: JOB_NAME {cls.JOB_NAME!r} is already registered "
            f"by {existing.__module__}.{existing.__qualname__}"
        )
    _registry[cls.JOB_NAME] = cls  # type: ignore[index]
    return cls


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _failed(errors: dict[str, str], name: str, what: str, error: BaseException) -> None:
    """Record that ``name`` cannot load; logged once, when first recorded."""
    if name not in errors:
        errors[name] = f"{what}: {_one_line(error)}"
        log.error("job type %s cannot load, the others go on: %s", name, errors[name])


def _class_name(cls: type) -> str:
    job_name = getattr(cls, "JOB_NAME", None)
    return job_name if isinstance(job_name, str) and job_name else cls.__qualname__


def load_job_types(settings: Settings | None = None) -> dict[str, type[JobTemplate]]:
    """Register the job types of the entry points and of the ``job_type_modules`` setting
    (once per process) and return the registry, keyed by JOB_NAME. Each type loads on its
    own: one that fails is recorded (see :func:`job_type_load_errors`) and left out."""
    global _entry_points_loaded
    settings = settings or get_settings()
    if not _entry_points_loaded:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            what = f"entry point {entry_point.name!r} ({entry_point.value})"
            try:
                register_job_type(entry_point.load(), settings)
            except Exception as exc:  # a broken plug-in must say which one it is
                _failed(_entry_point_errors, entry_point.name, what, exc)
        _entry_points_loaded = True
    for module_name in settings.job_type_modules:
        errors = _module_errors.setdefault(module_name, {})
        if module_name in errors:
            continue  # its import failed: not retried (and not logged again) each call
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            _failed(errors, module_name, f"job_type_modules {module_name!r}", exc)
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, JobTemplate)
                and "__tablename__" in value.__dict__
                and value.__module__ == module.__name__
            ):
                try:
                    register_job_type(value, settings)
                except JobTypeError as exc:
                    what = f"job_type_modules {module_name!r} ({value.__qualname__})"
                    _failed(errors, _class_name(value), what, exc)
    return dict(_registry)


def job_type_load_errors(settings: Settings | None = None) -> dict[str, str]:
    """The job types of this configuration that could not load (entry points and
    ``job_type_modules``), by name: why, in one line. Empty when every type loaded."""
    settings = settings or get_settings()
    load_job_types(settings)
    errors = dict(_entry_point_errors)
    for module_name in settings.job_type_modules:
        errors.update(_module_errors.get(module_name, {}))
    return errors


def get_job_type(job_name: str, settings: Settings | None = None) -> type[JobTemplate]:
    """The registered class for ``job_name``; :class:`JobTypeError` naming the known ones."""
    registry = load_job_types(settings)
    try:
        return registry[job_name]
    except KeyError:
        known = ", ".join(sorted(registry)) or "none registered"
        raise JobTypeError(f"unknown job type {job_name!r} (known: {known})") from None
