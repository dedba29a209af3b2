"""The synthetic input generators, and the science package's independence from the
service stack (science images install it with numpy, h5py and Pillow only)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
from joblife.science import snow, synthetic
from PIL import Image


def test_recording_layouts(tmp_path: Path) -> None:
    a = synthetic.make_recording(tmp_path / "a.h5", channels=4, samples=300, seed=1)
    b = synthetic.make_recording(
        tmp_path / "b.h5", channels=4, samples=300, layout="time_channel", seed=1
    )
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa["sig"].shape == (4, 300) and fb["sig"].shape == (300, 4)
        assert fa["sig"].dtype == np.int16 and fa["sig"].chunks is None
        np.testing.assert_array_equal(fa["sig"][()], fb["sig"][()].T)
        assert fa["sig"][()].std(axis=1).min() > 100  # every channel carries a signal
        assert fa["mapping/x"].shape == (4,)


def test_image_stack_files(tmp_path: Path) -> None:
    paths = synthetic.make_image_stack(tmp_path, frames=2, fmt="tif", dtype="uint16")
    assert [p.name for p in paths] == ["frame_000.tif", "frame_001.tif"]
    frames = [np.asarray(Image.open(p)) for p in paths]
    assert all(f.shape == (512, 512) and f.dtype == np.uint16 for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(frames, synthetic.image_stack_array(2, dtype="uint16"))


def test_tile_product_layout(tmp_path: Path) -> None:
    measured = datetime(2024, 3, 1, 10, 20, 30, tzinfo=UTC)
    product = synthetic.make_tile_product(tmp_path, "32TLR", measured, measured, size=48)
    assert product.product_id == "S2X_MSIL2A_20240301T102030_T32TLR"
    meta = json.loads((product.directory / "metadata.json").read_text())
    assert meta["tile_id"] == "32TLR" and meta["cloud_mask"] == "CLD.tif"
    codes, counts = np.unique(product.expected_mask, return_counts=True)
    assert codes.tolist() == [snow.NO_SNOW, snow.SNOW, snow.CLOUD, snow.NODATA]
    assert counts.min() >= 48  # at least a row of each
    clear = synthetic.make_tile_product(tmp_path / "c", "T", measured, measured, cloud=False)
    assert not (clear.directory / "CLD.tif").exists()
    assert snow.CLOUD not in clear.expected_mask


def test_science_package_needs_no_service_dependency() -> None:
    heavy = ["sqlalchemy", "pydantic", "typer", "rich", "pika", "docker", "boto3", "nomad"]
    code = (
        "import sys\n"
        "import joblife.science.h5repack, joblife.science.pyramid, joblife.science.snow\n"
        "import joblife.science.synthetic\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
