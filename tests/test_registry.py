"""Job types: the JobTemplate contract, registration and validation."""

from __future__ import annotations

import itertools
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from joblife.config import Settings
from joblife.model import Base, JobStatus, JobTemplate, JobTypeError, Priority, get_flavor
from joblife.model import registry as registry_module
from joblife.model.registry import get_job_type, load_job_types, register_job_type
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import Text

from tests.support.example_type import ExampleJob
from tests.support.factories import make_jobs

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _forget_ad_hoc_job_types():
    """The classes these tests declare must not leak into the registry or into the
    metadata other tests compare with the migrated schema."""
    tables = set(Base.metadata.tables)
    registered = dict(registry_module._registry)
    # With the registry restored, the entry points must be loaded again if they were not
    # before (else a later test finds "entry points loaded" and none of their types).
    entry_points_loaded = registry_module._entry_points_loaded
    yield
    for name in set(Base.metadata.tables) - tables:
        Base.metadata.remove(Base.metadata.tables[name])
    registry_module._registry.clear()
    registry_module._registry.update(registered)
    registry_module._entry_points_loaded = entry_points_loaded


VALID = {
    "JOB_NAME": "valid",
    "INPUT_PRODUCT_TYPE": "s2",
    "NOMAD_JOB_NAME": "joblife-valid",
    "WORKER_FLAVOR_NAME": "medium",
    "OUTPUT_PRODUCTS_LIST": ["out"],
    "GET_JOBS_WITH_STATUS_PROCEDURE_NAME": "get_valid_jobs_with_status",
}


def _job_type(**overrides) -> type[JobTemplate]:
    """A fresh JobTemplate subclass (own table, unique names) with ``overrides``."""
    n = next(_counter)
    attributes = {**VALID, "JOB_NAME": f"valid{n}", "__tablename__": f"valid{n}_jobs"}
    attributes.update(overrides)
    attributes["__module__"] = __name__
    attributes["__annotations__"] = {"extra": Mapped[str | None]}
    attributes["extra"] = mapped_column(Text)
    return type(f"Valid{n}Job", (JobTemplate,), attributes)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("WORKER_FLAVOR_NAME", "huge"),
        ("WORKER_FLAVOR_NAME", None),
        ("NOMAD_JOB_NAME", None),
        ("NOMAD_JOB_NAME", "  "),
        ("INPUT_PRODUCT_TYPE", None),
        ("OUTPUT_PRODUCTS_LIST", []),
        ("OUTPUT_PRODUCTS_LIST", ["a", "a"]),
        ("OUTPUT_PRODUCTS_LIST", "mask"),
        ("GET_JOBS_WITH_STATUS_PROCEDURE_NAME", None),
        ("GET_JOBS_WITH_STATUS_PROCEDURE_NAME", "drop table; --"),
        ("JOB_NAME", "Bad Name"),
        ("MAX_ATTEMPTS", 0),
    ],
)
def test_registration_refuses_a_wrong_attribute_naming_class_and_attribute(attribute, value):
    cls = _job_type(**{attribute: value})
    with pytest.raises(JobTypeError) as raised:
        register_job_type(cls)
    message = str(raised.value)
    assert cls.__qualname__ in message and attribute in message


def test_unknown_flavor_error_lists_the_catalogue():
    with pytest.raises(JobTypeError, match=r"extra_small.*small"):
        register_job_type(_job_type(WORKER_FLAVOR_NAME="gigantic"))


def test_flavor_from_configuration_is_accepted():
    settings = Settings(
        worker_flavors={"gpu_large": {"vcpus": 8, "memory_mib": 65536, "disk_gib": 200}}
    )
    cls = _job_type(WORKER_FLAVOR_NAME="gpu_large")
    with pytest.raises(JobTypeError):
        register_job_type(cls)
    assert register_job_type(cls, settings) is cls
    assert get_flavor("gpu_large", settings).memory_mib == 65536
    assert get_flavor("small").vcpus == 2


def test_a_second_class_with_the_same_job_name_is_refused():
    first = _job_type(JOB_NAME="twin", __tablename__="twin_a_jobs")
    register_job_type(first)
    register_job_type(first)  # the same class again: a no-op
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy warns about the reused identity too
        second = _job_type(JOB_NAME="twin", __tablename__="twin_b_jobs")
    with pytest.raises(JobTypeError, match="already registered"):
        register_job_type(second)


def test_not_a_job_template_is_refused():
    with pytest.raises(JobTypeError, match="subclass of JobTemplate"):
        register_job_type(dict)  # type: ignore[arg-type]


def test_types_load_from_configured_modules_and_unknown_type_is_clear():
    registry = load_job_types()
    assert registry["example"] is ExampleJob
    assert get_job_type("example") is ExampleJob
    with pytest.raises(JobTypeError, match=r"unknown job type 'nope'.*example"):
        get_job_type("nope")


def test_subclass_gets_its_key_and_identity_and_parameters_default_to_none():
    assert ExampleJob.__table__.c.id.foreign_keys
    assert ExampleJob.__mapper__.polymorphic_identity == "example"
    job = ExampleJob(input_product_id="P1")
    assert job.band is None and job.tile_id is None and job.output_path is None
    assert job.worker_flavor == "small" and job.max_attempts == ExampleJob.MAX_ATTEMPTS
    assert JobTemplate.JOB_NAME is None and JobTemplate.LAST_INSERTED_JOB is None


def test_default_hooks(session: Session):
    job = ExampleJob(input_product_id="P1", output_path="s3://b/out/P1")
    assert job.configure_single_job(session) is JobStatus.READY
    assert not job.generated_a_product()
    job.exit_code = 0
    assert job.generated_a_product()
    when = datetime(2026, 11, 2, tzinfo=UTC)
    job.set_product_publication_date(when)
    assert job.output_publication_date == when
    messages = job.get_products_publication_jsons()
    assert [m["product"] for m in messages] == ExampleJob.OUTPUT_PRODUCTS_LIST
    assert all(m["input_product_id"] == "P1" for m in messages)
    with pytest.raises(NotImplementedError, match=r"JobTemplate\.get_jobs_to_create"):
        JobTemplate.get_jobs_to_create(when, when)


def test_last_inserted_job_is_read_from_the_database(session: Session):
    base = datetime(2026, 11, 1, tzinfo=UTC)
    assert ExampleJob.get_last_inserted_job(session) is None
    for hours in (3, 1, 7, 2):
        make_jobs(
            session, 1, prefix=f"h{hours}-", input_publication_date=base + timedelta(hours=hours)
        )
    ExampleJob.LAST_INSERTED_JOB = None
    last = ExampleJob.get_last_inserted_job(session)
    assert last is not None and last.input_product_id == "h7-000000"
    assert ExampleJob.LAST_INSERTED_JOB is last
    ExampleJob.LAST_INSERTED_JOB = None


def test_natural_key_makes_a_duplicate_insert_a_no_op(session: Session):
    from joblife.model import Job
    from sqlalchemy import func, select
    from sqlalchemy.dialects.postgresql import insert

    make_jobs(session, 1, prefix="dup")
    values = {
        "job_type": "example",
        "input_product_id": "dup000000",
        "worker_flavor": "small",
        "priority": int(Priority.DELAYED),
    }
    result = session.execute(insert(Job).values(**values).on_conflict_do_nothing())
    assert result.rowcount == 0
    values["reprocessing_context"] = "campaign-2026"
    result = session.execute(insert(Job).values(**values).on_conflict_do_nothing())
    assert result.rowcount == 1
    session.commit()
    count = session.scalar(
        select(func.count()).select_from(Job).where(Job.input_product_id == "dup000000")
    )
    assert count == 2
