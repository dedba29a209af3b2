"""The image-ingest science step: pyramid levels have the right shapes, chunks and
metadata, each level is a 2x downsample of the one below, and bad stacks are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from joblife.science import outcome, pyramid, synthetic
from joblife.science.outcome import InvalidInput
from PIL import Image


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of fxf blocks over the y, x axes of a (z, y, x) stack."""
    z, h, w = a.shape
    return a.reshape(z, h // f, f, w // f, f).astype(np.float64).mean(axis=(2, 4))


def test_level_shapes_halve_rounding_up_down_to_the_minimum_size() -> None:
    assert pyramid.level_shapes(512, 512, 64) == [(512, 512), (256, 256), (128, 128), (64, 64)]
    assert pyramid.level_shapes(101, 37, 16) == [(101, 37), (51, 19), (26, 10), (13, 5)]
    assert pyramid.level_shapes(40, 30, 64) == [(40, 30)]
    assert pyramid.level_shapes(3, 1000, 100)[-1] == (1, 63)
    with pytest.raises(InvalidInput):
        pyramid.level_shapes(10, 10, 0)


def test_pyramid_of_a_stack_is_a_chain_of_2x_downsamples(tmp_path: Path) -> None:
    stack = synthetic.image_stack_array(frames=3, height=512, width=512, dtype="uint16", seed=1)
    result = pyramid.build_pyramid(
        stack, tmp_path / "p.h5", min_size=64, tile=128, gzip_level=1, voxel_size=(2.0, 0.5, 0.5)
    )
    assert result.shapes == ((3, 512, 512), (3, 256, 256), (3, 128, 128), (3, 64, 64))
    with h5py.File(result.output) as h5:
        levels = h5["levels"]
        assert levels.attrs["num_levels"] == 4
        assert levels.attrs["axes"] == "zyx"
        np.testing.assert_array_equal(levels["0"][()], stack)
        for k in range(4):
            dset = levels[str(k)]
            assert dset.dtype == np.uint16
            assert dset.chunks == (1, min(128, 512 >> k), min(128, 512 >> k))
            assert dset.compression == "gzip"
            assert tuple(dset.attrs["downsample_factor"]) == (1, 2**k, 2**k)
            assert tuple(dset.attrs["scale"]) == (1.0, 2.0**k, 2.0**k)
            assert tuple(dset.attrs["voxel_size"]) == (2.0, 0.5 * 2**k, 0.5 * 2**k)
        # Box filter at an exact halving: the rounded mean of each 2x2 block.
        for k in range(1, 4):
            below = levels[str(k - 1)][()]
            np.testing.assert_allclose(levels[str(k)][()], _block_mean(below, 2), atol=0.5)
        # And level 2 is, within rounding, the 4x4 block mean of level 0.
        np.testing.assert_allclose(levels["2"][()], _block_mean(stack, 4), atol=1.0)


def test_odd_sizes_and_colour_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 101, 67, 3), dtype=np.uint8)
    result = pyramid.build_pyramid(rgb, tmp_path / "rgb.h5", min_size=16, tile=32)
    assert result.shapes == (
        (2, 101, 67, 3), (2, 51, 34, 3), (2, 26, 17, 3), (2, 13, 9, 3)
    )  # fmt: skip
    with h5py.File(result.output) as h5:
        assert h5["levels"].attrs["axes"] == "zyxc"
        assert h5["levels/1"].chunks == (1, 32, 32, 3)
        assert h5["levels/3"].chunks == (1, 13, 9, 3)
        np.testing.assert_allclose(h5["levels/1"].attrs["scale"], (1.0, 101 / 51, 67 / 34))
        level1 = h5["levels/1"][()].astype(float)
    # Each channel is resampled on its own: a constant channel stays constant.
    flat = np.zeros((1, 9, 7, 3), dtype=np.uint8)
    flat[..., 1] = 200
    out = pyramid.build_pyramid(flat, tmp_path / "flat.h5", min_size=4)
    assert np.unique(pyramid.read_level(out.output, 1)[..., 1]).tolist() == [200]
    # Odd edge: the mean over a box of ~2x2 pixels stays within the input's range and near
    # the block means where the blocks line up (the top-left corner).
    assert level1.min() >= 0 and level1.max() <= 255
    corner = rgb[:, :2, :2].astype(float).mean(axis=(1, 2))
    np.testing.assert_allclose(level1[:, 0, 0], corner, atol=2)


def test_pyramid_from_image_files_including_multipage_tiff(tmp_path: Path) -> None:
    files = synthetic.make_image_stack(tmp_path / "png", frames=2, height=96, width=80)
    pages = synthetic.image_stack_array(frames=3, height=96, width=80, seed=5)
    tiff = tmp_path / "stack.tif"
    first, *rest = (Image.fromarray(p) for p in pages)
    first.save(tiff, save_all=True, append_images=rest)
    result = pyramid.build_pyramid([*files, tiff], tmp_path / "p.h5", min_size=32)
    assert result.frames == 5
    assert result.shapes == ((5, 96, 80), (5, 48, 40), (5, 24, 20))
    level0 = pyramid.read_level(result.output, 0)
    np.testing.assert_array_equal(level0[0], np.asarray(Image.open(files[0])))
    np.testing.assert_array_equal(level0[2:], pages)
    with h5py.File(result.output) as h5:
        assert list(h5["levels"].attrs["source_files"]) == [str(p) for p in [*files, tiff]]


def test_image_files_filters_directories_by_regex(tmp_path: Path) -> None:
    synthetic.make_image_stack(tmp_path / "d" / "raw", frames=3, height=8, width=8, prefix="pm31")
    (tmp_path / "d" / "notes.txt").write_text("x")
    files = pyramid.image_files([tmp_path / "d"], r"raw/pm31_00[02]\.png")
    assert [p.name for p in files] == ["pm31_000.png", "pm31_002.png"]
    with pytest.raises(InvalidInput, match="matches"):
        pyramid.image_files([tmp_path / "d"], r"nothing")


def test_invalid_stacks(tmp_path: Path) -> None:
    a, b = synthetic.make_image_stack(tmp_path, frames=2, height=16, width=16)
    Image.new("L", (16, 17)).save(tmp_path / "other.png")
    (tmp_path / "broken.png").write_text("not an image")
    out = tmp_path / "p.h5"
    cases = [
        ([a, tmp_path / "other.png"], "frame 1 is"),
        ([a, tmp_path / "broken.png"], "unreadable image"),
        ([tmp_path / "missing.png"], "not found"),
        (np.zeros((0, 4, 4), dtype=np.uint8), "image stack"),
        (np.zeros((2, 2, 2, 2, 2), dtype=np.uint8), "image stack"),
    ]
    for stack, message in cases:
        with pytest.raises(InvalidInput, match=message):
            pyramid.build_pyramid(stack, out)
        assert not out.exists()
        assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(InvalidInput, match="resampling"):
        pyramid.build_pyramid([a, b], out, resampling="magic")


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic.make_image_stack(tmp_path / "in", frames=2, height=16, width=16)
    out = str(tmp_path / "p.h5")
    assert pyramid.main([out, str(tmp_path / "in"), "--filter", "("]) == outcome.EXIT_INVALID_INPUT
    assert "invalid --filter" in capsys.readouterr().err
    assert pyramid.main([out, str(tmp_path / "in"), "--min-size", "8"]) == outcome.EXIT_PRODUCT
    assert json.loads(capsys.readouterr().out)["levels"] == [[2, 16, 16], [2, 8, 8]]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joblife.science.pyramid", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_line(tmp_path: Path) -> None:
    synthetic.make_image_stack(tmp_path / "in", frames=3, height=64, width=48, fmt="tif")
    done = _cli(str(tmp_path / "p.h5"), str(tmp_path / "in"), "--filter", r"frame_00[01]\.tif",
                "--min-size", "16")  # fmt: skip
    assert done.returncode == outcome.EXIT_PRODUCT, done.stderr
    assert json.loads(done.stdout)["levels"] == [[2, 64, 48], [2, 32, 24], [2, 16, 12]]

    missing = _cli(str(tmp_path / "q.h5"), str(tmp_path / "nope.png"))
    assert missing.returncode == outcome.EXIT_INVALID_INPUT
    assert missing.stderr.strip().splitlines() == [
        "python -m joblife.science.pyramid: invalid input: "
        f"input image not found: {tmp_path}/nope.png"
    ]
    assert not (tmp_path / "q.h5").exists()
