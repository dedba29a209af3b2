"""Rewrite an HDF5 recording so that reading one channel is fast (seed: job-h5-repack).

Each target dataset (by default: every numeric dataset of two or more dimensions) is
rechunked so that a chunk holds **one channel** and a run of consecutive samples: reading a
channel touches only that channel's chunks (a "chunk column") instead of every chunk of the
file. The channel axis is a parameter (``0`` for ``(channel, time, ...)``, ``-1`` for
``(time, channel)``); the chunk spans the whole extent of every other axis except the first
non-channel axis (time), which is cut so that a chunk is about ``chunk_bytes``. Compression
(gzip with shuffle) is optional. Other objects, groups and attributes are copied unchanged.

The HDF Group's ``h5repack`` (``-l`` layout, ``-f`` filters) does the work when it is on the
PATH (``method="auto"``); otherwise, or with ``method="h5py"``, h5py does. Either way the
output is written next to its final name and renamed into place once complete, then its
layout is checked against the plan.

Command line::

    python -m joblife.science.h5repack INPUT.h5 OUTPUT.h5 [--channel-axis 0]
        [--dataset /sig ...] [--gzip 4] [--chunk-bytes 1048576] [--method auto|tool|h5py]

Exit codes (:mod:`joblife.science.outcome`): 0 repacked file written; 3 no dataset to
rechunk (nothing written); 4 invalid input (missing file, not HDF5, unknown dataset, bad
channel axis); 5 the tool is missing (``--method tool``) or failed, or the output could not
be written.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import h5py
import numpy as np

from joblife.science.outcome import InvalidInput, NoProduct, ProcessingFailed, run_cli

Method = Literal["auto", "tool", "h5py"]

#: Default size of one chunk: 1 MiB, i.e. 512 Ki int16 samples of one channel.
DEFAULT_CHUNK_BYTES = 1 << 20
#: HDF5 refuses chunks of 4 GiB or more.
MAX_CHUNK_BYTES = (1 << 32) - 1
#: Bytes read per block when h5py copies a dataset (bounds the memory used).
COPY_BLOCK_BYTES = 64 << 20
#: Characters that h5repack's ``-l``/``-f`` syntax cannot carry in an object name.
_TOOL_UNSAFE = frozenset(",:")


@dataclass(frozen=True)
class DatasetPlan:
    """The new layout of one dataset."""

    name: str  # absolute HDF5 path, e.g. "/sig"
    shape: tuple[int, ...]
    chunks: tuple[int, ...]


@dataclass(frozen=True)
class RepackPlan:
    """What a repack does: the datasets to rechunk and the compression."""

    datasets: tuple[DatasetPlan, ...]
    channel_axis: int
    gzip_level: int | None = None

    def tool_arguments(self) -> list[str]:
        """The ``h5repack`` options (``-l`` layout and ``-f`` filters) of this plan."""
        args: list[str] = []
        for plan in self.datasets:
            if _TOOL_UNSAFE & set(plan.name):
                raise InvalidInput(f"dataset name {plan.name!r} cannot be passed to h5repack")
            args += ["-l", f"{plan.name}:CHUNK={'x'.join(map(str, plan.chunks))}"]
            if self.gzip_level is None:
                args += ["-f", f"{plan.name}:NONE"]
            else:
                args += ["-f", f"{plan.name}:SHUF", "-f", f"{plan.name}:GZIP={self.gzip_level}"]
        return args

    def tool_command(self, source: str, output: str, tool: str = "h5repack") -> list[str]:
        """The full ``h5repack`` command line, e.g. for a container whose paths differ."""
        return [tool, *self.tool_arguments(), source, output]


@dataclass
class RepackResult:
    """The outcome of :func:`repack`."""

    output: Path
    method: Literal["tool", "h5py"]
    plan: RepackPlan
    bytes_in: int
    bytes_out: int
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (printed by the command line)."""
        return {
            "output": str(self.output),
            "method": self.method,
            "channel_axis": self.plan.channel_axis,
            "gzip": self.plan.gzip_level,
            "datasets": {
                p.name: {"shape": p.shape, "chunks": p.chunks} for p in self.plan.datasets
            },
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


def open_hdf5(path: Path) -> h5py.File:
    """Open ``path`` read-only, or raise :class:`InvalidInput` saying why it cannot be."""
    if not path.is_file():
        raise InvalidInput(f"input file not found: {path}")
    if not h5py.is_hdf5(path):
        raise InvalidInput(f"not an HDF5 file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:  # truncated or corrupt file with a valid signature
        raise InvalidInput(f"cannot read HDF5 file {path}: {exc}") from exc


def chunk_shape(
    shape: Sequence[int], itemsize: int, channel_axis: int, chunk_bytes: int
) -> tuple[int, ...]:
    """The per-channel chunk of a dataset: 1 along the channel axis, the full extent of
    every other axis except the first non-channel one (time), cut to about ``chunk_bytes``."""
    ndim = len(shape)
    axis = channel_axis % ndim
    time_axis = 0 if axis != 0 else 1
    chunks = [max(1, n) for n in shape]
    chunks[axis] = 1
    rest = math.prod(chunks[i] for i in range(ndim) if i not in (axis, time_axis))
    chunks[time_axis] = max(1, min(chunks[time_axis], chunk_bytes // (itemsize * rest)))
    if math.prod(chunks) * itemsize > MAX_CHUNK_BYTES:
        raise InvalidInput(f"one channel of shape {tuple(shape)} does not fit an HDF5 chunk")
    return tuple(chunks)


def plan_repack(
    source: Path,
    channel_axis: int = 0,
    datasets: Sequence[str] | None = None,
    gzip_level: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> RepackPlan:
    """Inspect ``source`` and decide the new layout of its datasets.

    ``datasets`` names the datasets to rechunk; None means every numeric dataset of two or
    more dimensions. Raises :class:`InvalidInput` for a missing or non-HDF5 file, an unknown
    or unsuitable dataset, or a channel axis the dataset does not have.
    """
    if gzip_level is not None and not 0 <= gzip_level <= 9:
        raise InvalidInput(f"gzip level must be 0-9, not {gzip_level}")
    if chunk_bytes < 1:
        raise InvalidInput(f"chunk size must be positive, not {chunk_bytes}")
    with open_hdf5(source) as h5:
        if datasets is None:
            found: list[h5py.Dataset] = []
            h5.visititems(lambda _name, obj: found.append(obj) if _rechunkable(obj) else None)
        else:
            found = [_named_dataset(h5, name) for name in datasets]
        plans = []
        for dset in found:
            if not -dset.ndim <= channel_axis < dset.ndim:
                raise InvalidInput(
                    f"dataset {dset.name} has {dset.ndim} axes: no channel axis {channel_axis}"
                )
            chunks = chunk_shape(dset.shape, dset.dtype.itemsize, channel_axis, chunk_bytes)
            plans.append(DatasetPlan(dset.name, tuple(dset.shape), chunks))
    return RepackPlan(tuple(plans), channel_axis, gzip_level)


def _rechunkable(obj: Any) -> bool:
    return (
        isinstance(obj, h5py.Dataset)
        and obj.ndim >= 2
        and obj.size > 0
        and obj.dtype.kind in "biuf"
    )


def _named_dataset(h5: h5py.File, name: str) -> h5py.Dataset:
    obj = h5.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise InvalidInput(f"no dataset {name!r} in {h5.filename}")
    if not _rechunkable(obj):
        raise InvalidInput(
            f"dataset {name!r} cannot be rechunked per channel "
            f"(shape {obj.shape}, dtype {obj.dtype}): needs a non-empty numeric array of 2+ axes"
        )
    return obj


def find_tool(tool: str | None = None) -> str | None:
    """The path of the ``h5repack`` executable (``tool`` or the one on the PATH), if any."""
    return shutil.which(tool or "h5repack")


def repack(
    source: Path,
    output: Path,
    *,
    channel_axis: int = 0,
    datasets: Sequence[str] | None = None,
    gzip_level: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    method: Method = "auto",
    tool: str | None = None,
) -> RepackResult:
    """Write ``output``: ``source`` with per-channel chunks (see the module docstring).

    ``method``: ``"tool"`` runs ``h5repack`` (``tool`` or the one on the PATH; missing →
    :class:`ProcessingFailed`), ``"h5py"`` copies with h5py, ``"auto"`` uses the tool when
    found. Raises :class:`NoProduct` when the file has no dataset to rechunk,
    :class:`InvalidInput` for a bad input, :class:`ProcessingFailed` when writing fails.
    """
    source, output = Path(source), Path(output)
    if method not in ("auto", "tool", "h5py"):
        raise InvalidInput(f"unknown method {method!r}: auto, tool or h5py")
    if output.resolve() == source.resolve():
        raise InvalidInput(f"output must differ from the input: {output}")
    plan = plan_repack(source, channel_axis, datasets, gzip_level, chunk_bytes)
    if not plan.datasets:
        raise NoProduct(f"no numeric dataset of 2+ axes to rechunk in {source}")
    executable = find_tool(tool) if method != "h5py" else None
    if method == "tool" and executable is None:
        raise ProcessingFailed(f"h5repack tool not found: {tool or 'h5repack'} (PATH)")
    if executable is not None and any(_TOOL_UNSAFE & set(p.name) for p in plan.datasets):
        if method == "tool":
            plan.tool_arguments()  # raises InvalidInput naming the dataset
        executable = None  # auto: h5py handles any name

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProcessingFailed(f"cannot create output directory {output.parent}: {exc}") from exc
    partial = output.with_name(f".{output.name}.partial")
    try:
        if executable is not None:
            _repack_with_tool(plan, source, partial, executable)
        else:
            _repack_with_h5py(plan, source, partial)
        check_layout(partial, plan)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return RepackResult(
        output=output,
        method="tool" if executable is not None else "h5py",
        plan=plan,
        bytes_in=source.stat().st_size,
        bytes_out=output.stat().st_size,
    )


def _repack_with_tool(plan: RepackPlan, source: Path, output: Path, executable: str) -> None:
    output.unlink(missing_ok=True)  # a partial file left by a killed attempt
    command = plan.tool_command(str(source), str(output), tool=executable)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ProcessingFailed(f"cannot run {executable}: {exc}") from exc
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout or "").split())[:500]
        raise ProcessingFailed(f"h5repack exited {done.returncode}: {message or 'no message'}")


def _repack_with_h5py(plan: RepackPlan, source: Path, output: Path) -> None:
    targets = {p.name: p for p in plan.datasets}
    try:
        with h5py.File(source, "r") as src, h5py.File(output, "w") as dst:
            _copy_attrs(src, dst)
            _copy_group(src, dst, targets, plan)
    except OSError as exc:  # disk full, permission denied...
        raise ProcessingFailed(f"cannot write {output}: {exc}") from exc


def _copy_group(
    src: h5py.Group, dst: h5py.Group, targets: dict[str, DatasetPlan], plan: RepackPlan
) -> None:
    for name in src:
        link = src.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            dst[name] = link  # keep links as links, not as copies of their targets
            continue
        obj = src[name]
        if isinstance(obj, h5py.Dataset) and obj.name in targets:
            _copy_rechunked(obj, dst, name, targets[obj.name], plan)
        elif isinstance(obj, h5py.Group) and any(t.startswith(obj.name + "/") for t in targets):
            group = dst.create_group(name)
            _copy_attrs(obj, group)
            _copy_group(obj, group, targets, plan)
        else:  # untouched: HDF5's own copy keeps layout, filters and attributes
            src.copy(obj, dst, name)


def _copy_rechunked(
    src: h5py.Dataset, dst: h5py.Group, name: str, target: DatasetPlan, plan: RepackPlan
) -> None:
    compression = (
        {}
        if plan.gzip_level is None
        else {"compression": "gzip", "compression_opts": plan.gzip_level, "shuffle": True}
    )
    out = dst.create_dataset(
        name,
        shape=src.shape,
        dtype=src.dtype,
        chunks=target.chunks,
        maxshape=src.maxshape,
        fillvalue=src.fillvalue,
        **compression,
    )
    _copy_attrs(src, out)
    # Copy in blocks along the time axis, each a whole number of chunks along it, so every
    # chunk is written once and the memory used stays bounded.
    axis = plan.channel_axis % src.ndim
    time_axis = 0 if axis != 0 else 1
    row_bytes = src.dtype.itemsize * math.prod(n for i, n in enumerate(src.shape) if i != time_axis)
    step = target.chunks[time_axis]
    block = max(step, COPY_BLOCK_BYTES // max(1, row_bytes) // step * step)
    index: list[slice] = [slice(None)] * src.ndim
    for start in range(0, src.shape[time_axis], block):
        index[time_axis] = slice(start, start + block)
        out[tuple(index)] = src[tuple(index)]


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value


def check_layout(path: Path | BinaryIO, plan: RepackPlan) -> None:
    """Raise :class:`ProcessingFailed` unless ``path`` has the chunks and filters of ``plan``.
    ``path`` may be a file opened for reading (one the worker checked: what is checked is
    what it opened, not what a name leads to later)."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ProcessingFailed(f"the repacked file is not readable HDF5: {exc}") from exc
    with h5:
        for target in plan.datasets:
            dset = h5.get(target.name)
            if not isinstance(dset, h5py.Dataset) or dset.shape != target.shape:
                raise ProcessingFailed(f"repacked file lacks dataset {target.name}")
            if dset.chunks != target.chunks:
                raise ProcessingFailed(
                    f"{target.name} has chunks {dset.chunks}, expected {target.chunks}"
                )
            expected = None if plan.gzip_level is None else "gzip"
            if dset.compression != expected:
                raise ProcessingFailed(
                    f"{target.name} has compression {dset.compression}, expected {expected}"
                )


def channel(path: Path, dataset: str, index: int, channel_axis: int = 0) -> np.ndarray:
    """Read one channel of ``dataset`` (a convenience for checks and downstream steps)."""
    with h5py.File(path, "r") as h5:
        dset = h5[dataset]
        selection: list[Any] = [slice(None)] * dset.ndim
        selection[channel_axis % dset.ndim] = index
        return dset[tuple(selection)]


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m joblife.science.h5repack",
        description="Rechunk an HDF5 file so that one channel is read from its own chunks.",
        epilog="Exit codes: 0 written, 2 usage, 3 nothing to rechunk, 4 invalid input, "
        "5 tool missing/failed or output not writable.",
    )
    parser.add_argument("input", type=Path, help="the HDF5 file to repack")
    parser.add_argument("output", type=Path, help="the repacked file to write")
    parser.add_argument(
        "--channel-axis",
        type=int,
        default=0,
        help="axis of the channels: 0 for (channel, time, ...), -1 for (time, channel)",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        dest="datasets",
        metavar="PATH",
        help="dataset to rechunk (repeatable; default: every numeric dataset of 2+ axes)",
    )
    parser.add_argument("--gzip", type=int, metavar="LEVEL", help="gzip level 0-9 (+shuffle)")
    parser.add_argument(
        "--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES, help="target bytes per chunk"
    )
    parser.add_argument(
        "--method",
        choices=("auto", "tool", "h5py"),
        default="auto",
        help="h5repack tool, h5py, or the tool when on the PATH (default)",
    )
    parser.add_argument("--tool", help="h5repack executable (default: from the PATH)")
    return parser


def _main(args: argparse.Namespace) -> dict[str, Any]:
    return repack(
        args.input,
        args.output,
        channel_axis=args.channel_axis,
        datasets=args.datasets,
        gzip_level=args.gzip,
        chunk_bytes=args.chunk_bytes,
        method=args.method,
        tool=args.tool,
    ).summary()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    return run_cli(build_parser(), _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
