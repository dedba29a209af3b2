"""Exit codes, errors and the command-line wrapper shared by the science steps.

A science command line exits with one of these codes; the worker maps them to statuses:

====  ======================  =====================================================
code  constant                meaning (suggested job status)
====  ======================  =====================================================
0     ``EXIT_PRODUCT``        the product was written (``processed``)
1     (Python's own)          an unexpected exception, a bug (``internal_error``)
2     ``EXIT_USAGE``          bad command-line arguments (``internal_error``)
3     ``EXIT_NO_PRODUCT``     the input is valid but yields no product, e.g. a tile
                              with no valid pixel (``done`` without publication)
4     ``EXIT_INVALID_INPUT``  the input product is missing or malformed
                              (``internal_error``: retrying cannot help)
5     ``EXIT_FAILED``         processing failed for a reason outside the input: the
                              external tool is missing or crashed, the output could
                              not be written (``external_error``: retry)
====  ======================  =====================================================

The library functions raise :class:`NoProduct` when there is nothing to write,
:class:`InvalidInput` (an :class:`~joblife.errors.InternalJobError`) and
:class:`ProcessingFailed` (an :class:`~joblife.errors.ExternalJobError`), so a job type that
calls them in-process gets the same statuses from the worker runtime as one that runs the
command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from joblife.errors import ExternalJobError, InternalJobError, JoblifeError

EXIT_PRODUCT = 0
EXIT_USAGE = 2
EXIT_NO_PRODUCT = 3
EXIT_INVALID_INPUT = 4
EXIT_FAILED = 5

#: The job-type class attributes of the worker runtime
#: (``JobTemplate.PRODUCT_RETURN_CODES``...) for a step that runs one of these command lines.
PRODUCT_RETURN_CODES = frozenset({EXIT_PRODUCT})
NO_PRODUCT_RETURN_CODES = frozenset({EXIT_NO_PRODUCT})
RETRYABLE_RETURN_CODES = frozenset({EXIT_FAILED})

#: What each documented exit code means, for logs and the worker's messages.
EXIT_CODE_MEANINGS: dict[int, str] = {
    EXIT_PRODUCT: "product written",
    1: "unexpected error (bug)",
    EXIT_USAGE: "bad command-line arguments",
    EXIT_NO_PRODUCT: "valid input, no product",
    EXIT_INVALID_INPUT: "invalid input product",
    EXIT_FAILED: "processing failed (tool or output I/O)",
}


class InvalidInput(InternalJobError):
    """The input product is missing or malformed (not HDF5, a band missing...)."""


class ProcessingFailed(ExternalJobError):
    """Processing failed for a reason outside the input: tool missing or crashed, I/O error."""


class NoProduct(JoblifeError):
    """The input is valid but yields no product (e.g. a tile without a valid pixel): the
    job has nothing to publish. Not a failure."""


def run_cli(
    parser: argparse.ArgumentParser,
    action: Callable[[argparse.Namespace], dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``action`` and turn its outcome into an exit code.

    ``action`` returns a JSON-able summary, printed on one line on stdout; it raises
    :class:`NoProduct` when there is nothing to write. Typed failures print one line on
    stderr (``<prog>: error: <message>``); anything else propagates (exit 1, traceback).
    """
    args = parser.parse_args(argv)  # exits EXIT_USAGE on bad arguments
    try:
        summary = action(args)
    except NoProduct as exc:
        _say(parser.prog, "no product", exc)
        return EXIT_NO_PRODUCT
    except InvalidInput as exc:
        _say(parser.prog, "invalid input", exc)
        return EXIT_INVALID_INPUT
    except ProcessingFailed as exc:
        _say(parser.prog, "failed", exc)
        return EXIT_FAILED
    print(json.dumps(summary, sort_keys=True, default=str))
    return EXIT_PRODUCT


def _say(prog: str, what: str, exc: Exception) -> None:
    """One line on stderr, whatever the message holds."""
    message = " ".join(str(exc).splitlines())
    print(f"{prog}: {what}: {message}", file=sys.stderr)
