"""The tile time series science step: the snow mask follows the NDSI rule on known pixels
(snow, no snow, dark water, both thresholds' edges, no data, cloud); bad products are refused
with the documented exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from joblife.science import outcome, snow, synthetic
from joblife.science.outcome import InvalidInput, NoProduct
from joblife.science.snow import CLOUD, NO_SNOW, NODATA, SNOW
from PIL import Image

MEASURED = datetime(2024, 1, 5, 10, 30, tzinfo=UTC)
PUBLISHED = datetime(2024, 1, 5, 14, 0, tzinfo=UTC)

# (green DN, SWIR DN, cloud, expected): reflectance = DN / 10000.
KNOWN_PIXELS = [
    (6000, 800, False, SNOW),  # NDSI 0.76, bright
    (1200, 2500, False, NO_SNOW),  # NDSI < 0: bare ground
    (500, 100, False, NO_SNOW),  # NDSI 0.67 but green 0.05: water
    (3500, 1500, False, NO_SNOW),  # NDSI exactly 0.4: not above the threshold
    (3501, 1500, False, SNOW),  # NDSI just above 0.4
    (1000, 100, False, NO_SNOW),  # green exactly 0.10: not above the threshold
    (1001, 100, False, SNOW),  # green just above 0.10
    (0, 800, False, NODATA),  # no data in green
    (6000, 0, False, NODATA),  # no data in SWIR
    (6000, 800, True, CLOUD),  # snow-like but cloudy
    (0, 0, True, NODATA),  # no data wins over cloud
]


def test_classify_known_pixels() -> None:
    green, swir, cloud, expected = (np.array(column) for column in zip(*KNOWN_PIXELS, strict=True))
    mask = snow.classify(green.astype(np.uint16), swir.astype(np.uint16), cloud.astype(bool))
    assert mask.dtype == np.uint8
    assert mask.tolist() == expected.tolist()


def test_classify_applies_the_radiometric_offset_and_thresholds() -> None:
    # Sentinel-2 baseline 04.00: reflectance = (DN - 1000) / 10000.
    green = np.array([2000, 2001, 4500], dtype=np.uint16)  # 0.1000, 0.1001, 0.35
    swir = np.array([1050, 1050, 2500], dtype=np.uint16)  # 0.005, 0.005, 0.15
    assert snow.classify(green, swir, offset=-1000).tolist() == [NO_SNOW, SNOW, NO_SNOW]
    assert snow.classify(green, swir, offset=-1000, ndsi_threshold=0.3).tolist()[2] == SNOW
    # Read without the offset, pixel 1 has an NDSI of 951 / 3051 = 0.31: no snow.
    assert snow.classify(green, swir).tolist() == [NO_SNOW, NO_SNOW, NO_SNOW]


def test_snow_mask_of_a_synthetic_tile(tmp_path: Path) -> None:
    product = synthetic.make_tile_product(tmp_path / "in", "32TLR", MEASURED, PUBLISHED, size=64)
    result = snow.snow_mask_product(product.directory, tmp_path / "out" / "mask.tif")
    mask, meta = snow.read_mask(result.output)
    with Image.open(result.output) as image:
        assert (image.mode, image.size, image.format) == ("L", (64, 64), "TIFF")
        assert image.info.get("compression") == "tiff_adobe_deflate"
    np.testing.assert_array_equal(mask, product.expected_mask)
    assert set(np.unique(mask)) == {SNOW, NO_SNOW, CLOUD, NODATA}
    assert meta["tile_id"] == "32TLR"
    assert datetime.fromisoformat(meta["measurement_date"]) == MEASURED
    assert datetime.fromisoformat(meta["publication_date"]) == PUBLISHED
    assert meta["product_id"] == product.product_id
    assert meta["classes"] == {"no_snow": 0, "snow": 100, "cloud": 205, "nodata": 255}
    counts = {name: int((mask == code).sum()) for code, name in snow.CLASS_NAMES.items()}
    assert meta["counts"] == counts == result.counts
    assert result.snow_fraction == counts["snow"] / (counts["snow"] + counts["no_snow"])
    assert not list((tmp_path / "out").glob(".*partial"))


def test_swir_at_half_resolution_is_repeated_onto_the_green_grid(tmp_path: Path) -> None:
    product = tmp_path / "p"
    product.mkdir()
    green = np.full((4, 4), 6000, dtype=np.uint16)
    swir = np.array([[800, 5000], [800, 0]], dtype=np.uint16)  # 20 m: one value per 2x2
    Image.fromarray(green).save(product / "B03.tif")
    Image.fromarray(swir).save(product / "B11.tif")
    (product / "metadata.json").write_text(
        json.dumps(
            {
                "tile_id": "T1",
                "measurement_date": "2024-02-01",
                "publication_date": "2024-02-02T08:00:00Z",
            }
        )
    )
    result = snow.snow_mask_product(product, tmp_path / "m.tif")
    mask, _ = snow.read_mask(result.output)
    expected = np.array([[SNOW, NO_SNOW], [SNOW, NODATA]], dtype=np.uint8)
    np.testing.assert_array_equal(mask, expected.repeat(2, 0).repeat(2, 1))
    assert result.metadata.product_id == "p"


def test_a_tile_without_clear_pixels_yields_no_product(tmp_path: Path) -> None:
    product = synthetic.make_tile_product(tmp_path, "T2", MEASURED, PUBLISHED, size=16)
    Image.fromarray(np.ones((16, 16), dtype=np.uint8)).save(product.directory / "CLD.tif")
    with pytest.raises(NoProduct, match="no clear pixel"):
        snow.snow_mask_product(product.directory, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()
    code = snow.main([str(product.directory), str(tmp_path / "m.tif")])
    assert code == outcome.EXIT_NO_PRODUCT


def _break(product: Path, how: str) -> None:
    meta_path = product / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if how == "no metadata":
        meta_path.unlink()
    elif how == "no tile id":
        del meta["tile_id"]
        meta_path.write_text(json.dumps(meta))
    elif how == "bad date":
        meta["measurement_date"] = "yesterday"
        meta_path.write_text(json.dumps(meta))
    elif how == "band outside":
        meta["bands"] = {"B11": "../../B11.tif"}
        meta_path.write_text(json.dumps(meta))
    elif how == "no B11":
        (product / "B11.tif").unlink()
    elif how == "8-bit B03":
        Image.new("L", (16, 16)).save(product / "B03.tif")
    elif how == "RGB B03":
        Image.new("RGB", (16, 16)).save(product / "B03.tif")
    elif how == "B11 grid":
        Image.fromarray(np.ones((5, 5), dtype=np.uint16)).save(product / "B11.tif")
    elif how == "B11 not an image":
        (product / "B11.tif").write_text("junk")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no metadata", "missing metadata.json"),
        ("no tile id", "lacks tile_id"),
        ("bad date", "invalid value"),
        ("band outside", "not a file name within the product"),
        ("no B11", "missing band B11"),
        ("8-bit B03", "band B03 must be unsigned 16-bit, is uint8"),
        ("RGB B03", "band B03 must have one band"),
        ("B11 grid", r"band B11 has shape \(5, 5\)"),
        ("B11 not an image", "unreadable band B11"),
    ],
)
def test_invalid_products(tmp_path: Path, how: str, message: str) -> None:
    product = synthetic.make_tile_product(tmp_path, "T3", MEASURED, PUBLISHED, size=16)
    _break(product.directory, how)
    with pytest.raises(InvalidInput, match=message):
        snow.snow_mask_product(product.directory, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_missing_product_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="tile product not found"):
        snow.snow_mask_product(tmp_path / "nope", tmp_path / "m.tif")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joblife.science.snow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_line(tmp_path: Path) -> None:
    product = synthetic.make_tile_product(tmp_path, "31TCH", MEASURED, PUBLISHED, size=32)
    done = _cli(str(product.directory), str(tmp_path / "mask.tif"))
    assert done.returncode == outcome.EXIT_PRODUCT, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tile_id"] == "31TCH"
    assert summary["counts"]["snow"] == int((product.expected_mask == SNOW).sum())

    (product.directory / "B11.tif").unlink()
    bad = _cli(str(product.directory), str(tmp_path / "mask2.tif"))
    assert bad.returncode == outcome.EXIT_INVALID_INPUT
    assert bad.stderr.strip().splitlines() == [
        "python -m joblife.science.snow: invalid input: "
        f"missing band B11: {product.directory}/B11.tif"
    ]
    assert not (tmp_path / "mask2.tif").exists()
