"""A snow mask from a Sentinel-2-like tile product (the tile time series chain).

**Input product**: a directory holding

- ``metadata.json``: ``tile_id``, ``measurement_date`` and ``publication_date`` (ISO 8601),
  optionally ``product_id``, ``bands`` (file names, default ``{"B03": "B03.tif", "B11":
  "B11.tif"}``), ``cloud_mask`` (file name of a cloud mask, non-zero = cloud),
  ``quantification_value`` (default 10000) and ``radiometric_offset`` (default 0):
  reflectance = (DN + offset) / quantification, as in Sentinel-2 L2A;
- the green band B03 and the SWIR band B11 as single-band unsigned 16-bit TIFFs, DN 0 =
  no data. B11 may have half the resolution of B03 (20 m vs 10 m): it is then repeated to
  B03's grid (nearest neighbour), as is a cloud mask at B11's resolution.

**Rule** (the first pass of the Theia / Copernicus HR-S&I snow detection, after Hall et al.'s
SNOMAP): with G and S the green and SWIR reflectances and NDSI = (G - S) / (G + S),

- ``NODATA`` (255) where either band is no data (DN 0) or G + S <= 0;
- else ``CLOUD`` (205) where the cloud mask is set;
- else ``SNOW`` (100) where NDSI > 0.4 **and** G > 0.10 (strict: a pixel at either threshold
  is not snow; the green test rejects dark surfaces such as water, whose NDSI can be high);
- else ``NO_SNOW`` (0).

**Output**: a single-band uint8 TIFF (deflate-compressed) of those codes on B03's grid; its
ImageDescription tag holds the tile metadata, the rule and the class counts as JSON
(:func:`read_mask` reads both back). A tile with no clear pixel (all no data or cloud)
yields no product.

Command line::

    python -m joblife.science.snow PRODUCT_DIR OUTPUT.tif [--ndsi-threshold 0.4]
        [--green-threshold 0.10]

Exit codes (:mod:`joblife.science.outcome`): 0 mask written; 3 no clear pixel (nothing
written); 4 invalid input (no such directory, metadata missing or incomplete, a band missing
or not 16-bit single-band, grids that do not match); 5 the output could not be written.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from joblife.science.outcome import InvalidInput, NoProduct, ProcessingFailed, run_cli

#: Class codes of the mask.
NO_SNOW = 0
SNOW = 100
CLOUD = 205
NODATA = 255
CLASS_NAMES = {NO_SNOW: "no_snow", SNOW: "snow", CLOUD: "cloud", NODATA: "nodata"}

NDSI_THRESHOLD = 0.4
GREEN_THRESHOLD = 0.10
#: Sentinel-2's reflectance scale and no-data DN.
QUANTIFICATION = 10_000
DN_NODATA = 0
METADATA_FILE = "metadata.json"
DEFAULT_BANDS = {"B03": "B03.tif", "B11": "B11.tif"}


@dataclass(frozen=True)
class TileMetadata:
    """The metadata of a tile product (``metadata.json``)."""

    product_id: str
    tile_id: str
    measurement_date: datetime
    publication_date: datetime
    bands: dict[str, str]
    cloud_mask: str | None = None
    quantification_value: float = QUANTIFICATION
    radiometric_offset: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The metadata as JSON-able values (dates in ISO 8601)."""
        return {
            "product_id": self.product_id,
            "tile_id": self.tile_id,
            "measurement_date": self.measurement_date.isoformat(),
            "publication_date": self.publication_date.isoformat(),
        }


@dataclass
class SnowResult:
    """The outcome of :func:`snow_mask_product`."""

    output: Path
    metadata: TileMetadata
    counts: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def snow_fraction(self) -> float:
        """Snow pixels over clear (snow + no snow) pixels."""
        clear = self.counts["snow"] + self.counts["no_snow"]
        return self.counts["snow"] / clear if clear else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (printed by the command line)."""
        return {
            "output": str(self.output),
            **self.metadata.to_json(),
            "counts": self.counts,
            "snow_fraction": round(self.snow_fraction, 6),
        }


def read_metadata(product: Path) -> TileMetadata:
    """Read and validate ``<product>/metadata.json``; :class:`InvalidInput` if unusable."""
    if not product.is_dir():
        raise InvalidInput(f"tile product not found (a directory is expected): {product}")
    path = product / METADATA_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidInput(f"missing {METADATA_FILE} in {product}") from exc
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"unreadable {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path} must hold a JSON object")
    missing = [k for k in ("tile_id", "measurement_date", "publication_date") if not raw.get(k)]
    if missing:
        raise InvalidInput(f"{path} lacks {', '.join(missing)}")
    bands = raw.get("bands") or {}
    cloud_mask = raw.get("cloud_mask")
    if not isinstance(bands, dict) or not isinstance(cloud_mask, str | None):
        raise InvalidInput(f"{path}: bands must map band names to files, cloud_mask be a file")
    bands = {**DEFAULT_BANDS, **bands}
    for name in [*bands.values(), cloud_mask or "."]:
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise InvalidInput(f"{path}: {name!r} is not a file name within the product")
    try:
        return TileMetadata(
            product_id=str(raw.get("product_id") or product.name),
            tile_id=str(raw["tile_id"]),
            measurement_date=datetime.fromisoformat(str(raw["measurement_date"])),
            publication_date=datetime.fromisoformat(str(raw["publication_date"])),
            bands={str(k): str(v) for k, v in bands.items()},
            cloud_mask=cloud_mask,
            quantification_value=float(raw.get("quantification_value", QUANTIFICATION)),
            radiometric_offset=float(raw.get("radiometric_offset", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid value in {path}: {exc}") from exc


def read_band(path: Path, name: str, *, uint16: bool = True) -> np.ndarray:
    """Read a single-band image; :class:`InvalidInput` if missing, unreadable or, with
    ``uint16``, not unsigned 16-bit."""
    if not path.is_file():
        raise InvalidInput(f"missing band {name}: {path}")
    try:
        with Image.open(path) as image:
            data = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"unreadable band {name} ({path}): {exc}") from exc
    if data.ndim != 2:
        raise InvalidInput(f"band {name} must have one band, has shape {data.shape}: {path}")
    if uint16 and data.dtype != np.uint16:
        raise InvalidInput(f"band {name} must be unsigned 16-bit, is {data.dtype}: {path}")
    return data


def _on_grid(data: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``data`` on a grid of ``shape``: as is, or repeated 2x when at half resolution."""
    if data.shape == shape:
        return data
    if (data.shape[0] * 2, data.shape[1] * 2) == shape:
        return data.repeat(2, axis=0).repeat(2, axis=1)
    raise InvalidInput(f"band {name} has shape {data.shape}, which does not match B03's {shape}")


def ndsi(green_dn: np.ndarray, swir_dn: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """NDSI = (G - S) / (G + S) from the digital numbers (the scale cancels out); NaN where
    G + S <= 0."""
    g = green_dn.astype(np.float64) + offset
    s = swir_dn.astype(np.float64) + offset
    total = g + s
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (g - s) / total, np.nan)


def classify(
    green_dn: np.ndarray,
    swir_dn: np.ndarray,
    cloud: np.ndarray | None = None,
    *,
    ndsi_threshold: float = NDSI_THRESHOLD,
    green_threshold: float = GREEN_THRESHOLD,
    quantification: float = QUANTIFICATION,
    offset: float = 0.0,
) -> np.ndarray:
    """The uint8 mask of the rule in the module docstring, from the bands' digital numbers
    (same shape) and an optional boolean cloud mask."""
    index = ndsi(green_dn, swir_dn, offset)
    green = (green_dn.astype(np.float64) + offset) / quantification
    nodata = (green_dn == DN_NODATA) | (swir_dn == DN_NODATA) | np.isnan(index)
    mask = np.full(green_dn.shape, NO_SNOW, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        mask[(index > ndsi_threshold) & (green > green_threshold)] = SNOW
    if cloud is not None:
        mask[cloud] = CLOUD
    mask[nodata] = NODATA
    return mask


def class_counts(mask: np.ndarray) -> dict[str, int]:
    """Pixels per class name."""
    return {name: int(np.count_nonzero(mask == code)) for code, name in CLASS_NAMES.items()}


def snow_mask_product(
    product: Path,
    output: Path,
    *,
    ndsi_threshold: float = NDSI_THRESHOLD,
    green_threshold: float = GREEN_THRESHOLD,
) -> SnowResult:
    """Compute the snow mask of the tile ``product`` and write it to ``output`` (TIFF).

    Raises :class:`InvalidInput` for a bad product, :class:`NoProduct` when no pixel is
    clear, :class:`ProcessingFailed` when the output cannot be written.
    """
    product, output = Path(product), Path(output)
    meta = read_metadata(product)
    for band in ("B03", "B11"):
        if band not in meta.bands:
            raise InvalidInput(f"metadata of {product} names no file for band {band}")
    green = read_band(product / meta.bands["B03"], "B03")
    swir = _on_grid(read_band(product / meta.bands["B11"], "B11"), green.shape, "B11")
    cloud = None
    if meta.cloud_mask:
        raw = read_band(product / meta.cloud_mask, "cloud mask", uint16=False)
        cloud = _on_grid(raw, green.shape, "cloud mask") != 0
    mask = classify(
        green,
        swir,
        cloud,
        ndsi_threshold=ndsi_threshold,
        green_threshold=green_threshold,
        quantification=meta.quantification_value,
        offset=meta.radiometric_offset,
    )
    counts = class_counts(mask)
    if counts["snow"] + counts["no_snow"] == 0:
        raise NoProduct(f"no clear pixel in {meta.product_id} (all no data or cloud)")
    description = {
        **meta.to_json(),
        "rule": {
            "ndsi": "(B03 - B11) / (B03 + B11)",
            "snow": f"ndsi > {ndsi_threshold} and B03 reflectance > {green_threshold}",
            "nodata": "B03 or B11 DN == 0",
        },
        "classes": {name: code for code, name in CLASS_NAMES.items()},
        "counts": counts,
    }
    _write_mask(mask, output, description)
    return SnowResult(output, meta, counts)


def _write_mask(mask: np.ndarray, output: Path, description: dict[str, Any]) -> None:
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(
            partial,
            format="TIFF",
            compression="tiff_deflate",
            description=json.dumps(description, sort_keys=True),
        )
        os.replace(partial, output)
    except OSError as exc:
        raise ProcessingFailed(f"cannot write {output}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def read_mask(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a mask written by :func:`snow_mask_product`: the codes and the JSON metadata."""
    with Image.open(path) as image:
        description = image.tag_v2.get(270, "{}")
        return np.asarray(image), json.loads(description)


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m joblife.science.snow",
        description="Snow mask (NDSI rule) of a Sentinel-2-like tile product.",
        epilog="Exit codes: 0 written, 2 usage, 3 no clear pixel, 4 invalid input, "
        "5 output not writable.",
    )
    parser.add_argument("product", type=Path, help="the tile product directory")
    parser.add_argument("output", type=Path, help="the mask TIFF to write")
    parser.add_argument("--ndsi-threshold", type=float, default=NDSI_THRESHOLD)
    parser.add_argument("--green-threshold", type=float, default=GREEN_THRESHOLD)
    return parser


def _main(args: argparse.Namespace) -> dict[str, Any]:
    return snow_mask_product(
        args.product,
        args.output,
        ndsi_threshold=args.ndsi_threshold,
        green_threshold=args.green_threshold,
    ).summary()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    return run_cli(build_parser(), _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
