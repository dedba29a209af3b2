"""Small, fast generators of valid inputs for each science chain (tests and ``joblife demo``).

Each generator is deterministic for a given ``seed`` and takes well under 0.2 s with its
defaults:

- :func:`make_recording`: an HDF5 recording of N channels x T samples (seed 000).
- :func:`make_image_stack` / :func:`image_stack_array`: a few 512x512 frames (seed 004).
- :func:`make_tile_product`: a Sentinel-2-like tile product with known snow pixels, and the
  mask the NDSI rule must give (tile time series).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from PIL import Image

from joblife.science import snow

# -- HDF5 recording (h5repack) ----------------------------------------------------------------


def make_recording(
    path: Path,
    channels: int = 32,
    samples: int = 20_000,
    layout: Literal["channel_time", "time_channel"] = "channel_time",
    seed: int = 0,
) -> Path:
    """Write an HDF5 recording like a multi-electrode array's: ``/sig`` int16 samples laid
    out contiguously (``(channels, samples)`` or ``(samples, channels)``), ``/time`` (1-D,
    seconds), a ``/mapping`` group with the electrode positions, and attributes."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples, dtype=np.float64) / 20_000.0
    freqs = 5.0 + 3.0 * np.arange(channels)[:, None]  # a different tone per channel
    sig = 1000.0 * np.sin(2 * np.pi * freqs * t) + rng.normal(0.0, 50.0, (channels, samples))
    data = sig.astype(np.int16)
    if layout == "time_channel":
        data = np.ascontiguousarray(data.T)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.attrs["version"] = "20160704"
        h5.attrs["sample_rate_hz"] = 20_000.0
        dset = h5.create_dataset("sig", data=data)  # contiguous: slow per-channel reads
        dset.attrs["layout"] = layout
        dset.attrs["lsb_uv"] = 6.294
        h5.create_dataset("time", data=t)
        mapping = h5.create_group("mapping")
        mapping.attrs["electrode_pitch_um"] = 17.5
        mapping.create_dataset("x", data=np.arange(channels, dtype=np.float32) * 17.5)
        mapping.create_dataset("channel", data=np.arange(channels, dtype=np.int32))
    return path


# -- image stack (pyramid) --------------------------------------------------------------------


def image_stack_array(
    frames: int = 3, height: int = 512, width: int = 512, dtype: str = "uint8", seed: int = 0
) -> np.ndarray:
    """A ``(frames, height, width)`` stack of smooth gradients with a bright disc per frame
    (compressible, so writing PNG/TIFF files stays fast)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top = float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else 1.0
    stack = np.empty((frames, height, width), dtype=dtype)
    for z in range(frames):
        cy, cx = rng.uniform(0.25, 0.75, 2) * (height, width)
        radius = 0.15 * min(height, width)
        disc = ((y - cy) ** 2 + (x - cx) ** 2) < radius**2
        frame = 0.3 * (x / max(1, width - 1)) + 0.2 * (y / max(1, height - 1)) + 0.5 * disc
        stack[z] = (frame * top).astype(dtype)
    return stack


def make_image_stack(
    directory: Path,
    frames: int = 3,
    height: int = 512,
    width: int = 512,
    fmt: Literal["png", "tif"] = "png",
    dtype: str = "uint8",
    prefix: str = "frame",
    seed: int = 0,
) -> list[Path]:
    """Write :func:`image_stack_array` as one image file per frame, named
    ``<prefix>_000.<fmt>``...; return the paths in stack order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for z, frame in enumerate(image_stack_array(frames, height, width, dtype, seed)):
        path = directory / f"{prefix}_{z:03d}.{fmt}"
        options = {"compress_level": 1} if fmt == "png" else {}
        Image.fromarray(frame).save(path, **options)
        paths.append(path)
    return paths


# -- tile product (snow) ----------------------------------------------------------------------

#: Reflectances (green, SWIR) of the generator's surface classes.
SURFACES: dict[str, tuple[float, float]] = {
    "snow": (0.60, 0.08),  # NDSI 0.76, bright: snow
    "bare": (0.12, 0.25),  # NDSI < 0: no snow
    "water": (0.05, 0.01),  # NDSI 0.67 but dark: no snow (the green threshold)
    "edge": (0.30, 0.1286),  # NDSI 0.3999: just below the NDSI threshold, no snow
}


@dataclass(frozen=True)
class TileProduct:
    """A generated tile product and the mask the snow rule must give for it."""

    directory: Path
    tile_id: str
    measurement_date: datetime
    publication_date: datetime
    expected_mask: np.ndarray  # uint8 codes of :mod:`joblife.science.snow`

    @property
    def product_id(self) -> str:
        """The product's id (its directory name)."""
        return self.directory.name


def product_name(tile_id: str, measurement_date: date | datetime) -> str:
    """A Sentinel-2-like product name, e.g. ``S2X_MSIL2A_20240105T103000_T32TLR``."""
    stamp = measurement_date.strftime("%Y%m%dT%H%M%S")
    return f"S2X_MSIL2A_{stamp}_T{tile_id}"


def make_tile_product(
    parent: Path,
    tile_id: str,
    measurement_date: datetime,
    publication_date: datetime,
    size: int = 128,
    snow_fraction: float = 0.4,
    cloud: bool = True,
    seed: int = 0,
) -> TileProduct:
    """Write a tile product directory under ``parent``: ``B03.tif`` and ``B11.tif`` (uint16
    reflectance x 10000, 0 = no data), ``CLD.tif`` (cloud mask, when ``cloud``) and
    ``metadata.json``. The rows are, from the top: snow (``snow_fraction`` of the rows),
    bare ground, water, one row of threshold-edge pixels, a band of cloud over bare ground,
    and a no-data strip; the expected mask is built from that layout, not from the rule."""
    rng = np.random.default_rng(seed)
    green = np.empty((size, size), dtype=np.float64)
    swir = np.empty_like(green)
    expected = np.full((size, size), snow.NO_SNOW, dtype=np.uint8)

    def fill(rows: slice, surface: str) -> None:
        g, s = SURFACES[surface]
        n = green[rows].shape[0]
        # A little texture that keeps each pixel on its side of both thresholds.
        jitter = 1.0 + (0.0 if surface == "edge" else rng.uniform(-0.05, 0.05, (n, size)))
        green[rows] = g * jitter
        swir[rows] = s * jitter

    n_snow = max(1, int(size * snow_fraction))
    rest = size - n_snow
    bare_end = n_snow + rest // 3
    water_end = bare_end + rest // 6
    edge_row = water_end
    cloud_end = edge_row + 1 + rest // 6
    nodata_start = size - max(1, size // 16)
    fill(slice(0, n_snow), "snow")
    expected[:n_snow] = snow.SNOW
    fill(slice(n_snow, bare_end), "bare")
    fill(slice(bare_end, water_end), "water")
    fill(slice(edge_row, edge_row + 1), "edge")
    fill(slice(edge_row + 1, size), "bare")
    cloud_mask = np.zeros((size, size), dtype=np.uint8)
    if cloud:
        cloud_mask[edge_row + 1 : cloud_end] = 1
        expected[edge_row + 1 : cloud_end] = snow.CLOUD

    b03 = np.round(green * snow.QUANTIFICATION).astype(np.uint16)
    b11 = np.round(swir * snow.QUANTIFICATION).astype(np.uint16)
    b03[nodata_start:, : size // 2] = snow.DN_NODATA  # no data in one band is enough
    b11[nodata_start:, size // 2 :] = snow.DN_NODATA
    expected[nodata_start:] = snow.NODATA

    directory = Path(parent) / product_name(tile_id, measurement_date)
    directory.mkdir(parents=True, exist_ok=True)
    Image.fromarray(b03).save(directory / "B03.tif")
    Image.fromarray(b11).save(directory / "B11.tif")
    metadata = {
        "product_id": directory.name,
        "tile_id": tile_id,
        "measurement_date": measurement_date.isoformat(),
        "publication_date": publication_date.isoformat(),
        "bands": {"B03": "B03.tif", "B11": "B11.tif"},
    }
    if cloud:
        Image.fromarray(cloud_mask).save(directory / "CLD.tif")
        metadata["cloud_mask"] = "CLD.tif"
    (directory / snow.METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return TileProduct(directory, tile_id, measurement_date, publication_date, expected)
