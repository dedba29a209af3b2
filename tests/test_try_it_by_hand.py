"""The partner guide's "Try it by hand on the embedded defaults" (docs/partner-guide.md, the
worked example), run as written (issue 17): its ``bash`` block is read from the guide and
each command line run in order, as a new partner would, on the embedded defaults: a fresh
data dir, no database URL, no broker, no storage URL.

Two liberties, both the suite's: ``pip install`` goes into a directory of its own on
``PYTHONPATH`` (``--target``, without dependencies: joblife and numpy are this
environment's), as tests/test_partner_example.py installs the package, so that the suite's
environment is not changed; and ``joblife`` is ``python -m joblife.cli.main``. The comment
lines say what the partner does by hand: the products comment is parsed for where to write
them, and ``run --once`` is repeated, as its comment says, until the jobs are final."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from joblife.db.embedded import stop_embedded_server

from tests.test_partner_example import FINAL, GUIDE, JOBLIFE, PIP_INSTALL, REPO

#: The sentence before the block, in the guide.
INTRO = "Try it by hand on the embedded defaults:"
#: How long ``run --once`` is repeated before the jobs must be final (seconds).
DEADLINE = 120
#: The products the test writes: red and near-infrared bands with valid pixels.
PRODUCTS = {
    "TILE-A": (
        np.array([[10, 50], [20, 30]], np.uint16),
        np.array([[90, 50], [60, 10]], np.uint16),
    ),
    "TILE-B": (np.array([[5, 5]], np.uint16), np.array([[15, 45]], np.uint16)),
}


@dataclass(frozen=True)
class Line:
    """One line of the guide's block: its words (comment stripped) and its comment."""

    words: list[str]
    comment: str


def guide_block() -> list[Line]:
    """The lines of the ``bash`` block that follows :data:`INTRO` in the guide."""
    guide = GUIDE.read_text()
    assert guide.count(INTRO) == 1, f"the guide has no (single) {INTRO!r}"
    block = re.match(r"\s*```bash\n(.*?)```\n", guide[guide.index(INTRO) + len(INTRO) :], re.S)
    assert block is not None, f"no ```bash block right after {INTRO!r}"
    lines = []
    for line in block.group(1).splitlines():
        if line.strip():
            comment = line.partition("#")[2].strip() if "#" in line else ""
            lines.append(Line(shlex.split(line, comments=True), comment))
    return lines


def write_products(storage: Path, comment: str) -> list[str]:
    """The products the comment describes (``products: <storage>/PREFIX/<product>/{FILES}``),
    written under ``storage``, dated now (the text after the block says why); their ids."""
    described = re.fullmatch(r"products: <storage>/(\S+)/<product>/\{([^}]+)\}", comment)
    assert described is not None, f"the products comment changed: {comment!r}"
    prefix, files = described.group(1), described.group(2).split(",")
    assert sorted(files) == ["metadata.json", "nir.npy", "red.npy"], files
    for product, (red, nir) in PRODUCTS.items():
        folder = storage / prefix / product
        folder.mkdir(parents=True)
        np.save(folder / "red.npy", red)
        np.save(folder / "nir.npy", nir)
        metadata = {"tile_id": "31TCJ", "published_at": datetime.now(UTC).isoformat()}
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return list(PRODUCTS)


def statuses(listing: str) -> dict[str, str]:
    """Each input product's status in the table of ``joblife jobs list``."""
    header: list[str] = []
    found = {}
    for line in listing.splitlines():
        if "┃" in line:
            header = [cell.strip() for cell in line.split("┃")]
        elif "│" in line and header:
            row = dict(zip(header, (cell.strip() for cell in line.split("│")), strict=True))
            found[row["input product"]] = row["status"]
    return found


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    """A fresh data dir; the embedded server ``joblife db upgrade`` starts in it is
    stopped at the end."""
    directory = server_tmp_path / "data"
    yield directory
    stop_embedded_server(directory / "postgres")


def test_the_partner_guide_try_it_by_hand_runs_as_written(data_dir: Path, tmp_path: Path):
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBLIFE_", "NDVI_"))}
    env.update(
        {
            "JOBLIFE_DATA_DIR": str(data_dir),
            "JOBLIFE_CONFIG": str(data_dir / "no-config.toml"),  # no user config either
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
            "COLUMNS": "200",  # the table of `jobs list` unabridged
        }
    )

    def run(command: list[str]) -> str:
        result = subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    block = guide_block()
    products: list[str] = []
    listing = ""
    ran = []
    for line in block:
        if not line.words:  # a comment line: what the partner does by hand
            products = write_products(data_dir / "storage", line.comment)
            ran.append("products")
            continue
        program, *args = line.words
        if program == "pip":
            assert args[0] == "install", line
            run([*PIP_INSTALL, "--no-deps", "--target", str(site), *args[1:]])
        elif args == ["run", "--once"]:
            assert products, "the guide runs `joblife run --once` before writing products"
            assert "repeat" in line.comment, line.comment
            deadline = time.monotonic() + DEADLINE
            while True:
                run([*JOBLIFE, *args])
                listing = run([*JOBLIFE, "jobs", "list", "--type", "ndvi"])
                now = statuses(listing)
                if len(now) == len(products) and set(now.values()) <= {s.label for s in FINAL}:
                    break
                assert time.monotonic() < deadline, f"ndvi jobs not final:\n{listing}"
                time.sleep(0.5)
        else:
            assert program == "joblife", line
            listing = run([*JOBLIFE, *args])
        ran.append(shlex.join(line.words))

    assert ran[0].startswith("pip install ") and "joblife db upgrade" in ran, ran
    assert ran.index("products") < ran.index("joblife run --once"), ran
    assert ran[-1] == "joblife jobs list --type ndvi", ran
    # The block's last command shows every product's job done.
    assert statuses(listing) == dict.fromkeys(products, "done"), listing
    for product, (red, nir) in PRODUCTS.items():
        index = np.load(data_dir / "storage" / "ndvi" / product / "ndvi.npy")
        red, nir = red.astype(np.float32), nir.astype(np.float32)
        np.testing.assert_allclose(index, (nir - red) / (nir + red), rtol=1e-6)
    # Nothing configured: the messages went to the spool in the data dir (issue 17, item 3).
    spool = data_dir / "publication-spool" / "publications.jsonl"
    messages = [json.loads(line) for line in spool.read_text().splitlines()]
    assert sorted(m["body"]["input_product_id"] for m in messages) == sorted(products)
