"""The ndvi science step: ``python -m joblife_ndvi.science INPUT_DIR OUTPUT [--threshold T]``.

NDVI = (nir - red) / (nir + red) per pixel, NaN where both bands are 0 (no data), written
as a float32 ``.npy``; one JSON line on stdout (pixels, vegetated share). Exit codes (the
convention of ``joblife.science.outcome``): 0 product, 3 no product (no valid pixel),
4 invalid input (missing band, shapes differ), 5 output not writable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# The exit codes of joblife.science.outcome, repeated: the science image needs no joblife.
EXIT_NO_PRODUCT, EXIT_INVALID_INPUT, EXIT_FAILED = 3, 4, 5


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """The vegetation index of two bands of the same shape (NaN where both are 0)."""
    red, nir = red.astype(np.float32), nir.astype(np.float32)
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total == 0, np.nan, (nir - red) / total).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m joblife_ndvi.science")
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args(argv)

    def fail(code: int, message: str) -> int:
        print(f"{parser.prog}: {message}", file=sys.stderr)
        return code

    try:
        red = np.load(args.input_dir / "red.npy")
        nir = np.load(args.input_dir / "nir.npy")
    except (OSError, ValueError) as exc:
        return fail(EXIT_INVALID_INPUT, f"invalid input: {exc}")
    if red.shape != nir.shape:
        return fail(EXIT_INVALID_INPUT, f"band shapes differ: {red.shape} and {nir.shape}")
    index = ndvi(red, nir)
    valid = ~np.isnan(index)
    if not valid.any():
        return fail(EXIT_NO_PRODUCT, "no valid pixel")
    partial = args.output.with_name(f".{args.output.name}.partial")
    try:
        with partial.open("wb") as stream:
            np.save(stream, index)
        partial.rename(args.output)
    except OSError as exc:
        return fail(EXIT_FAILED, f"cannot write {args.output}: {exc}")
    vegetated = float((index[valid] > args.threshold).mean())
    print(json.dumps({"pixels": int(valid.sum()), "vegetated_share": round(vegetated, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
