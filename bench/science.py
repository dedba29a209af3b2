"""Benchmark of the science steps (no database needed): how long each synthetic generator
and each science step takes at the sizes ``joblife demo`` uses, and what the h5repack
layout buys: the time to read one channel of a recording before and after repacking.

    python bench/science.py [--repeat 5] [--channels 256] [--samples 200000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import h5py
from benchkit import print_table
from joblife.science import h5repack, pyramid, snow, synthetic


def median_seconds(action: Callable[[int], object], repeat: int) -> float:
    """Median wall time of ``action(i)`` over ``repeat`` runs."""
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--channels", type=int, default=256, help="recording for the read test")
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    when = datetime(2024, 1, 5, 10, 30, tzinfo=UTC)
    rows: list[tuple[str, str, str, str]] = []

    def check(name: str, seconds: float, target: float) -> None:
        ok = "PASS" if seconds < target else "FAIL"
        rows.append((name, ms(seconds), f"< {ms(target)}", ok))

    with tempfile.TemporaryDirectory(prefix="joblife-bench-science-") as tmp:
        d = Path(tmp)
        r = args.repeat

        # Generators, at their default (demo) sizes.
        def recording(i: int) -> object:
            return synthetic.make_recording(d / f"rec{i}.h5")

        def images(i: int) -> object:
            return synthetic.make_image_stack(d / f"img{i}")

        def tile(i: int) -> object:
            return synthetic.make_tile_product(d / f"t{i}", "32TLR", when, when)

        check("make_recording 32 ch x 20k", median_seconds(recording, r), 0.2)
        check("make_image_stack 3 x 512x512 png", median_seconds(images, r), 0.2)
        check("make_tile_product 128x128", median_seconds(tile, r), 0.2)

        # Science steps on those inputs.
        files = sorted((d / "img0").iterdir())
        product = next((d / "t0").iterdir())
        for method in dict.fromkeys(["tool" if h5repack.find_tool() else "h5py", "h5py"]):

            def repack(i: int, m: str = method) -> object:
                return h5repack.repack(d / "rec0.h5", d / f"out-{m}{i}.h5", method=m)

            check(f"h5repack ({method}) 32 ch x 20k", median_seconds(repack, r), 1.0)

        def build(i: int) -> object:
            return pyramid.build_pyramid(files, d / f"p{i}.h5")

        def mask(i: int) -> object:
            return snow.snow_mask_product(product, d / f"m{i}.tif")

        check("pyramid 3 x 512x512 -> 4 levels", median_seconds(build, r), 1.0)
        check("snow mask 128x128", median_seconds(mask, r), 1.0)

        # What the repack is for: reading one channel of a (time, channel) recording.
        big = synthetic.make_recording(
            d / "big.h5", args.channels, args.samples, layout="time_channel"
        )
        start = time.perf_counter()
        repacked = h5repack.repack(big, d / "big-repacked.h5", channel_axis=-1)
        rows.append(
            (
                f"repack the big recording ({repacked.method})",
                ms(time.perf_counter() - start),
                "",
                "",
            )
        )

        def read_channel(path: Path) -> Callable[[int], object]:
            def read(i: int) -> object:
                with h5py.File(path, "r") as h5:  # a new file each time: no chunk cache
                    return h5["sig"][:, (i * 37) % args.channels]

            return read

        before = median_seconds(read_channel(big), r)
        after = median_seconds(read_channel(repacked.output), r)
        size = f"{args.channels} ch x {args.samples}"
        rows.append((f"read 1 channel, contiguous ({size})", ms(before), "", ""))
        rows.append(
            (f"read 1 channel, repacked ({size})", ms(after), "", f"{before / after:.0f}x faster")
        )
    print_table(rows)


if __name__ == "__main__":
    main()
