"""The outputs of an attempt, as the product message announces them: the URL of the output
prefix and each file with its size, SHA-256 and URL.

The default post-processing (:func:`joblife.worker.steps.upload_outputs`) records them on
the job once every output is uploaded; the skip of an earlier attempt's outputs records
them from that attempt's manifest. The default product message
(:meth:`JobTemplate.get_products_publication_jsons
<joblife.model.template.JobTemplate.get_products_publication_jsons>`) reads them back with
:func:`recorded_outputs`; a type that uploads its own outputs records none (the message
then says ``null``). They are kept on the job object only, for this worker's attempt:
never stored in a column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The job object's attribute holding its recorded outputs (not a column).
_ATTRIBUTE = "_joblife_outputs"


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One uploaded output: ``name`` relative to the output prefix (``/``-separated),
    ``size`` in bytes, ``sha256`` (lowercase hex; None when an earlier joblife's manifest
    listed none) and ``url`` in the storage."""

    name: str
    size: int
    sha256: str | None
    url: str

    def as_json(self) -> dict[str, Any]:
        """The file as the product message lists it."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "url": self.url}


@dataclass(frozen=True, slots=True)
class ProductOutputs:
    """Where an attempt's outputs are (``url``: the storage URL of the output prefix) and
    which files they are, sorted by name."""

    url: str
    files: tuple[OutputFile, ...]

    def files_json(self) -> list[dict[str, Any]]:
        """The files as the product message lists them."""
        return [f.as_json() for f in self.files]


def record_outputs(job: object, outputs: ProductOutputs) -> None:
    """Keep ``outputs`` on ``job`` (this process's object only) for its product message."""
    setattr(job, _ATTRIBUTE, outputs)


def recorded_outputs(job: object) -> ProductOutputs | None:
    """The outputs recorded on ``job`` by :func:`record_outputs`, else None."""
    outputs = getattr(job, _ATTRIBUTE, None)
    return outputs if isinstance(outputs, ProductOutputs) else None
