"""A chunked multi-resolution pyramid of an image stack (seed: image service ingest).

Level 0 is the stack at full size, ``(z, y, x)`` (or ``(z, y, x, c)`` for RGB/RGBA images);
each next level halves y and x (``ceil(n / 2)``, so an odd edge keeps its last pixels) and
keeps z. Levels are added while the current level's larger side exceeds ``min_size``: the
top level fits in a ``min_size`` square. Each frame is resampled by Pillow (a box filter by
default: at an exact halving, the mean of each 2x2 block) in 32-bit float and rounded back to
the stack's dtype.

The output is one HDF5 file: datasets ``/levels/0``, ``/levels/1``... chunked
``(1, tile, tile[, c])`` with optional gzip. Attributes: on ``/levels``: ``axes``,
``num_levels``, ``resampling``, ``min_size``, ``source_files`` (when read from files);
on each level: ``level``, ``downsample_factor`` (2**level along y and x, 1 along z),
``scale`` (level 0's size over this level's, per axis: the exact factor at odd sizes) and,
when a ``voxel_size`` is given, ``voxel_size`` (level 0's times ``scale``) and ``unit``.

Command line::

    python -m joblife.science.pyramid OUTPUT.h5 INPUT [INPUT ...] [--filter REGEX]
        [--min-size 64] [--tile 256] [--gzip 4] [--resampling box]

An INPUT is an image file (any format Pillow reads; multi-page TIFFs give several frames)
or a directory, whose files are taken in name order, those whose path relative to it fully
matches ``--filter`` when given (e.g. ``'pm31\\d{2}o\\.png'``).

Exit codes (:mod:`joblife.science.outcome`): 0 pyramid written; 4 invalid input (missing or
unreadable image, no image matched, frames of different sizes or kinds); 5 the output could
not be written.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from joblife.science.outcome import InvalidInput, ProcessingFailed, run_cli

DEFAULT_MIN_SIZE = 64
DEFAULT_TILE = 256
RESAMPLING = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
#: Pillow modes turned into ones numpy maps to a plain array.
_CONVERT = {"1": "L", "P": "RGBA", "PA": "RGBA", "LA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}


def level_shapes(
    height: int, width: int, min_size: int = DEFAULT_MIN_SIZE
) -> list[tuple[int, int]]:
    """The (y, x) size of every level: halved (rounding up) while the larger side of the
    previous level exceeds ``min_size``."""
    if min_size < 1:
        raise InvalidInput(f"minimum size must be at least 1, not {min_size}")
    shapes = [(height, width)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def downsample(frame: np.ndarray, size: tuple[int, int], resampling: str = "box") -> np.ndarray:
    """Resize a 2-D frame (or ``(y, x, c)``) to ``size`` = (y, x) with Pillow, in 32-bit
    float per channel, rounded and clipped back to the frame's dtype."""
    if frame.ndim == 3:
        return np.stack(
            [downsample(frame[..., c], size, resampling) for c in range(frame.shape[2])], axis=-1
        )
    filt = RESAMPLING[resampling]
    image = Image.fromarray(frame.astype(np.float32, copy=False), mode="F")
    out = np.asarray(image.resize((size[1], size[0]), resample=filt), dtype=np.float32)
    if np.issubdtype(frame.dtype, np.integer):
        info = np.iinfo(frame.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(frame.dtype)


@dataclass(frozen=True)
class PyramidResult:
    """The outcome of :func:`build_pyramid`."""

    output: Path
    frames: int
    dtype: str
    shapes: tuple[tuple[int, ...], ...]  # full shape of each level

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (printed by the command line)."""
        return {
            "output": str(self.output),
            "frames": self.frames,
            "dtype": self.dtype,
            "levels": [list(s) for s in self.shapes],
        }


def image_files(inputs: Sequence[Path], pattern: str | None = None) -> list[Path]:
    """Expand ``inputs``: files as given, directories to their files in name order (those
    whose relative path fully matches ``pattern``, when given). :class:`InvalidInput` when
    one is missing or nothing is left."""
    regex = re.compile(pattern) if pattern else None
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file())
            files += [
                p for p in found if not regex or regex.fullmatch(p.relative_to(item).as_posix())
            ]
        elif item.is_file():
            files.append(item)
        else:
            raise InvalidInput(f"input image not found: {item}")
    if not files:
        raise InvalidInput(
            f"no image in {', '.join(map(str, inputs))}"
            + (f" matches {pattern!r}" if pattern else "")
        )
    return files


def read_frames(files: Sequence[Path]) -> Iterator[np.ndarray]:
    """Yield the frames of ``files`` one at a time (every page of a multi-page image)."""
    for path in files:
        try:
            with Image.open(path) as image:
                for page in ImageSequence.Iterator(image):
                    mode = _CONVERT.get(page.mode)
                    yield np.asarray(page.convert(mode) if mode else page)
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidInput(f"unreadable image {path}: {exc}") from exc


def build_pyramid(
    stack: np.ndarray | Sequence[Path],
    output: Path,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    tile: int = DEFAULT_TILE,
    gzip_level: int | None = None,
    resampling: str = "box",
    voxel_size: Sequence[float] | None = None,
    unit: str = "um",
) -> PyramidResult:
    """Write the pyramid of ``stack`` (a 2-D/3-D/4-D array or image files) to ``output``.

    Frames are processed one at a time, so memory holds one frame and its levels. Raises
    :class:`InvalidInput` for bad images or parameters, :class:`ProcessingFailed` when the
    output cannot be written.
    """
    output = Path(output)
    if resampling not in RESAMPLING:
        raise InvalidInput(f"unknown resampling {resampling!r}: one of {', '.join(RESAMPLING)}")
    if tile < 1 or (gzip_level is not None and not 0 <= gzip_level <= 9):
        raise InvalidInput(f"invalid tile {tile} or gzip level {gzip_level}")
    if voxel_size is not None and len(voxel_size) != 3:
        raise InvalidInput(f"voxel size needs 3 values (z, y, x), got {len(voxel_size)}")
    sources: list[str] = []
    if isinstance(stack, np.ndarray):
        array = stack[np.newaxis] if stack.ndim == 2 else stack
        if array.ndim not in (3, 4) or array.size == 0:
            raise InvalidInput(f"an image stack is (z, y, x) or (z, y, x, c), not {stack.shape}")
        frames: Iterator[np.ndarray] = iter(array)
        count = array.shape[0]
    else:
        files = image_files(list(stack))
        sources = [str(p) for p in files]
        frames = read_frames(files)
        count = -1  # known once read: the file is sized by the first frame, then extended

    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(partial, "w") as h5:
            result = _write_levels(
                h5, frames, count, min_size, tile, gzip_level, resampling, voxel_size, unit
            )
            h5["levels"].attrs["source_files"] = sources
        os.replace(partial, output)
    except OSError as exc:
        raise ProcessingFailed(f"cannot write {output}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return PyramidResult(output, *result)


def _write_levels(
    h5: h5py.File,
    frames: Iterator[np.ndarray],
    count: int,
    min_size: int,
    tile: int,
    gzip_level: int | None,
    resampling: str,
    voxel_size: Sequence[float] | None,
    unit: str,
) -> tuple[int, str, tuple[tuple[int, ...], ...]]:
    group = h5.create_group("levels")
    datasets: list[h5py.Dataset] = []
    shapes: list[tuple[int, int]] = []
    first: np.ndarray | None = None
    z = -1
    for z, frame in enumerate(frames):
        if first is None:
            first = frame
            if frame.ndim not in (2, 3) or frame.dtype.kind not in "uif" or frame.size == 0:
                raise InvalidInput(f"unsupported image: shape {frame.shape}, dtype {frame.dtype}")
            shapes = level_shapes(frame.shape[0], frame.shape[1], min_size)
            datasets = [
                _create_level(group, k, shape, frame, count, tile, gzip_level)
                for k, shape in enumerate(shapes)
            ]
        elif frame.shape != first.shape or frame.dtype != first.dtype:
            raise InvalidInput(
                f"frame {z} is {frame.shape} {frame.dtype}, frame 0 is {first.shape} {first.dtype}"
            )
        level = frame
        for k, (dset, shape) in enumerate(zip(datasets, shapes, strict=True)):
            if k:
                level = downsample(level, shape, resampling)
            if count < 0:
                dset.resize(z + 1, axis=0)
            dset[z] = level
    if first is None:
        raise InvalidInput("the image stack is empty")
    frames_done = z + 1
    full_shapes = tuple(tuple(d.shape) for d in datasets)
    group.attrs.update(
        {
            "axes": "zyxc" if first.ndim == 3 else "zyx",
            "num_levels": len(datasets),
            "resampling": resampling,
            "min_size": min_size,
        }
    )
    height, width = shapes[0]
    for k, (dset, (h, w)) in enumerate(zip(datasets, shapes, strict=True)):
        scale = (1.0, height / h, width / w)
        dset.attrs["level"] = k
        dset.attrs["downsample_factor"] = (1, 2**k, 2**k)
        dset.attrs["scale"] = scale
        if voxel_size is not None:
            dset.attrs["voxel_size"] = [v * s for v, s in zip(voxel_size, scale, strict=True)]
            dset.attrs["unit"] = unit
    return frames_done, str(first.dtype), full_shapes


def _create_level(
    group: h5py.Group,
    level: int,
    shape: tuple[int, int],
    frame: np.ndarray,
    count: int,
    tile: int,
    gzip_level: int | None,
) -> h5py.Dataset:
    extra = frame.shape[2:]
    chunks = (1, min(tile, shape[0]), min(tile, shape[1]), *extra)
    compression = (
        {} if gzip_level is None else {"compression": "gzip", "compression_opts": gzip_level}
    )
    return group.create_dataset(
        str(level),
        shape=(max(count, 0), *shape, *extra),
        maxshape=(None, *shape, *extra),
        dtype=frame.dtype,
        chunks=chunks,
        **compression,
    )


def read_level(path: Path, level: int) -> np.ndarray:
    """Read one level of a pyramid file (a convenience for checks and viewers)."""
    with h5py.File(path, "r") as h5:
        return h5["levels"][str(level)][()]


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m joblife.science.pyramid",
        description="Multi-resolution pyramid (HDF5 /levels/N) of an image stack.",
        epilog="Exit codes: 0 written, 2 usage, 4 invalid input, 5 output not writable.",
    )
    parser.add_argument("output", type=Path, help="the HDF5 pyramid to write")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files or directories")
    parser.add_argument("--filter", help="regular expression on file paths within directories")
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="chunk size in y and x")
    parser.add_argument("--gzip", type=int, metavar="LEVEL", help="gzip level 0-9")
    parser.add_argument("--resampling", choices=sorted(RESAMPLING), default="box")
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"))
    parser.add_argument("--unit", default="um", help="unit of --voxel-size")
    return parser


def _main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        files = image_files(args.inputs, args.filter)
    except re.error as exc:
        raise InvalidInput(f"invalid --filter {args.filter!r}: {exc}") from exc
    return build_pyramid(
        files,
        args.output,
        min_size=args.min_size,
        tile=args.tile,
        gzip_level=args.gzip,
        resampling=args.resampling,
        voxel_size=args.voxel_size,
        unit=args.unit,
    ).summary()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    return run_cli(build_parser(), _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
