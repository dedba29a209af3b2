"""The h5repack science step: the repacked file has per-channel chunks and identical data,
through the HDF Group's tool and through h5py; bad inputs give the documented errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from joblife.science import h5repack, outcome, synthetic
from joblife.science.outcome import InvalidInput, NoProduct, ProcessingFailed

from tests.support.services import unavailable

CHUNK_BYTES = 4096  # small, so a channel spans several chunks along time


@pytest.fixture(params=["tool", "h5py"])
def method(request: pytest.FixtureRequest) -> str:
    if request.param == "tool" and shutil.which("h5repack") is None:
        unavailable("h5repack not on the PATH (Debian package hdf5-tools)")
    return request.param


def _assert_same_content(a: h5py.Group, b: h5py.Group) -> None:
    """Same objects, same data, same attributes, recursively."""
    assert sorted(a) == sorted(b)
    assert {k: np.asarray(v).tolist() for k, v in a.attrs.items()} == {
        k: np.asarray(v).tolist() for k, v in b.attrs.items()
    }
    for name in a:
        if isinstance(a[name], h5py.Group):
            _assert_same_content(a[name], b[name])
        else:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name][()], b[name][()])
            assert dict(a[name].attrs) == dict(b[name].attrs)


@pytest.mark.parametrize("gzip_level", [None, 4])
@pytest.mark.parametrize(("layout", "channel_axis"), [("channel_time", 0), ("time_channel", -1)])
def test_repack_rechunks_per_channel_and_keeps_data(
    tmp_path: Path, method: str, layout: str, channel_axis: int, gzip_level: int | None
) -> None:
    source = synthetic.make_recording(
        tmp_path / "in.h5", channels=8, samples=5000, layout=layout, seed=3
    )
    result = h5repack.repack(
        source,
        tmp_path / "out" / "repacked.h5",
        channel_axis=channel_axis,
        gzip_level=gzip_level,
        chunk_bytes=CHUNK_BYTES,
        method=method,
    )
    assert result.method == method
    samples_per_chunk = CHUNK_BYTES // 2  # int16
    expected_chunks = (1, samples_per_chunk) if channel_axis == 0 else (samples_per_chunk, 1)
    with h5py.File(source) as src, h5py.File(result.output) as out:
        sig = out["sig"]
        assert sig.chunks == expected_chunks
        assert sig.compression == ("gzip" if gzip_level else None)
        assert sig.shuffle == bool(gzip_level)
        assert src["sig"].chunks is None  # the input was contiguous
        _assert_same_content(src, out)
        # One channel is read from its own chunk column: 5000 samples → 3 chunks.
        column = [
            info.chunk_offset
            for info in map(sig.id.get_chunk_info, range(sig.id.get_num_chunks()))
            if info.chunk_offset[channel_axis] == 5
        ]
        assert len(column) == 3
    index = 5
    expected = np.asarray(h5py.File(source)["sig"])
    expected = expected[index] if channel_axis == 0 else expected[:, index]
    np.testing.assert_array_equal(
        h5repack.channel(result.output, "sig", index, channel_axis), expected
    )
    assert not list((tmp_path / "out").glob(".*partial"))  # nothing left behind


def test_uncompressed_output_drops_source_filters_and_keeps_other_objects(
    tmp_path: Path, method: str
) -> None:
    source = tmp_path / "in.h5"
    data = np.arange(6 * 300 * 2, dtype=np.float32).reshape(6, 300, 2)
    with h5py.File(source, "w") as h5:
        h5.create_dataset("grp/cube", data=data, chunks=(6, 10, 2), compression="gzip")
        h5.create_dataset("grp/labels", data=np.array([b"a", b"b"]))  # not numeric: copied
        h5.create_dataset("untouched", data=data[0], compression="gzip")
        h5["alias"] = h5py.SoftLink("/grp/cube")
    result = h5repack.repack(
        source, tmp_path / "out.h5", datasets=["/grp/cube"], chunk_bytes=800, method=method
    )
    with h5py.File(result.output) as out:
        cube = out["grp/cube"]
        assert cube.chunks == (1, 100, 2)  # 800 bytes / (4 bytes x 2)
        assert cube.compression is None
        np.testing.assert_array_equal(cube[()], data)
        assert out["untouched"].compression == "gzip"  # not a target: layout kept
        assert out["grp/labels"][()].tolist() == [b"a", b"b"]
        assert isinstance(out.get("alias", getlink=True), h5py.SoftLink)
        np.testing.assert_array_equal(out["alias"][()], data)


def test_plan_picks_numeric_datasets_of_two_axes_and_builds_the_tool_command(
    tmp_path: Path,
) -> None:
    source = synthetic.make_recording(tmp_path / "in.h5", channels=4, samples=100)
    plan = h5repack.plan_repack(source, gzip_level=2)
    assert [p.name for p in plan.datasets] == ["/sig"]  # /time and /mapping/* are 1-D
    assert plan.tool_command("/work/in.h5", "/work/out.h5") == [
        "h5repack",
        "-l", "/sig:CHUNK=1x100",
        "-f", "/sig:SHUF",
        "-f", "/sig:GZIP=2",
        "/work/in.h5",
        "/work/out.h5",
    ]  # fmt: skip


def test_chunk_shape_bounds_the_chunk_size() -> None:
    # (channel, time, 4 sub-samples) float64: time cut so a chunk is ~1 KiB.
    assert h5repack.chunk_shape((16, 10_000, 4), 8, 0, 1024) == (1, 32, 4)
    assert h5repack.chunk_shape((10_000, 16), 2, 1, 1 << 20) == (10_000, 1)
    assert h5repack.chunk_shape((3, 5), 2, 0, 1) == (1, 1)


def test_no_dataset_to_rechunk_is_no_product(tmp_path: Path) -> None:
    source = tmp_path / "flat.h5"
    with h5py.File(source, "w") as h5:
        h5["t"] = np.arange(10)
    with pytest.raises(NoProduct):
        h5repack.repack(source, tmp_path / "out.h5", method="h5py")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda p: None, {}, "input file not found"),
        (lambda p: p.write_text("not hdf5"), {}, "not an HDF5 file"),
        (lambda p: synthetic.make_recording(p, 2, 10), {"datasets": ["/nope"]}, "no dataset"),
        (
            lambda p: synthetic.make_recording(p, 2, 10),
            {"datasets": ["/time"]},
            "cannot be rechunked",
        ),
        (lambda p: synthetic.make_recording(p, 2, 10), {"channel_axis": 2}, "no channel axis 2"),
    ],
)
def test_invalid_inputs(tmp_path: Path, make, kwargs: dict, message: str) -> None:
    source = tmp_path / "in.h5"
    make(source)
    with pytest.raises(InvalidInput, match=message):
        h5repack.repack(source, tmp_path / "out.h5", method="h5py", **kwargs)
    assert not (tmp_path / "out.h5").exists()


def test_tool_missing_or_failing_is_a_processing_failure(tmp_path: Path) -> None:
    source = synthetic.make_recording(tmp_path / "in.h5", 2, 10)
    with pytest.raises(ProcessingFailed, match="not found"):
        h5repack.repack(source, tmp_path / "o.h5", method="tool", tool="/nonexistent/h5repack")
    failing = tmp_path / "failing-tool"
    failing.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('cannot\\nrepack')\n")
    failing.chmod(0o755)
    with pytest.raises(ProcessingFailed, match=r"h5repack exited 1: cannot repack$"):
        h5repack.repack(source, tmp_path / "o.h5", method="tool", tool=str(failing))
    assert sorted(tmp_path.iterdir()) == [failing, source]


def test_tool_output_is_checked_against_the_plan(tmp_path: Path) -> None:
    """A tool that exits 0 but did not write the planned layout is caught."""
    source = synthetic.make_recording(tmp_path / "in.h5", 2, 10)
    copies = tmp_path / "copy-tool"  # "repacks" by copying: the layout is unchanged
    copies.write_text(f"#!{sys.executable}\nimport shutil, sys\nshutil.copy(*sys.argv[-2:])\n")
    junk = tmp_path / "junk-tool"
    junk.write_text(f"#!{sys.executable}\nimport sys\nopen(sys.argv[-1], 'w').write('junk')\n")
    for tool in (copies, junk):
        tool.chmod(0o755)
    with pytest.raises(ProcessingFailed, match="/sig has chunks None, expected"):
        h5repack.repack(source, tmp_path / "o.h5", method="tool", tool=str(copies))
    with pytest.raises(ProcessingFailed, match="not readable HDF5"):
        h5repack.repack(source, tmp_path / "o.h5", method="tool", tool=str(junk))
    assert not (tmp_path / "o.h5").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = synthetic.make_recording(tmp_path / "in.h5", 2, 10)
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as h5:
        h5["t"] = np.arange(3)
    out = str(tmp_path / "o.h5")
    assert h5repack.main([str(flat), out, "--method", "h5py"]) == outcome.EXIT_NO_PRODUCT
    assert h5repack.main([str(source), out, "--channel-axis", "5"]) == outcome.EXIT_INVALID_INPUT
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(f"no product: no numeric dataset of 2+ axes to rechunk in {flat}")
    assert "invalid input: dataset /sig has 2 axes: no channel axis 5" in err[1]
    missing_tool = [str(source), out, "--method", "tool", "--tool", "/nonexistent/h5repack"]
    assert h5repack.main(missing_tool) == outcome.EXIT_FAILED
    assert "failed: h5repack tool not found: /nonexistent/h5repack" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        h5repack.main([str(source)])
    assert usage.value.code == outcome.EXIT_USAGE


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joblife.science.h5repack", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_line(tmp_path: Path) -> None:
    source = synthetic.make_recording(tmp_path / "in.h5", 4, 1000)
    done = _cli(str(source), str(tmp_path / "out.h5"), "--gzip", "1", "--method", "h5py")
    assert done.returncode == outcome.EXIT_PRODUCT, done.stderr
    summary = json.loads(done.stdout)
    assert summary["datasets"]["/sig"]["chunks"] == [1, 1000]
    assert summary["method"] == "h5py"

    (tmp_path / "bad.h5").write_text("plain text")
    bad = _cli(str(tmp_path / "bad.h5"), str(tmp_path / "out2.h5"))
    assert bad.returncode == outcome.EXIT_INVALID_INPUT
    assert bad.stderr.strip().splitlines() == [
        f"python -m joblife.science.h5repack: invalid input: not an HDF5 file: {tmp_path}/bad.h5"
    ]
    assert bad.stdout == ""


REPO = Path(__file__).resolve().parents[1]
# A tag of its own per session: concurrent test runs must not remove each other's image.
IMAGE = f"localhost/joblife-h5repack:test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def h5repack_image() -> Iterator[str]:
    """The h5repack image built from host binaries by workers/build-local-image.sh."""
    if shutil.which("podman") is None:
        unavailable("podman not installed (scripts/container-engine.sh)")
    if shutil.which("h5repack") is None:
        unavailable("h5repack not on the PATH (Debian package hdf5-tools)")
    built = subprocess.run(
        ["bash", str(REPO / "workers" / "build-local-image.sh"), IMAGE],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert f"built {IMAGE}: h5repack: Version" in built.stderr
    yield IMAGE
    subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True, timeout=60, check=False)


def test_repack_in_the_local_container_image(tmp_path: Path, h5repack_image: str) -> None:
    """The image holds a working h5repack: run the plan's command in it (paths as the
    container sees them, no network, the caller's uid) and check the result on the host."""
    source = synthetic.make_recording(tmp_path / "in.h5", channels=6, samples=3000, seed=9)
    plan = h5repack.plan_repack(source, gzip_level=1, chunk_bytes=2000)
    command = plan.tool_command("/work/in.h5", "/work/out.h5")
    done = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
         "-v", f"{tmp_path}:/work", h5repack_image, *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    h5repack.check_layout(tmp_path / "out.h5", plan)
    with h5py.File(source) as src, h5py.File(tmp_path / "out.h5") as out:
        assert out["sig"].chunks == (1, 1000)
        assert out["sig"].compression == "gzip"
        _assert_same_content(src, out)
    # A bad input fails inside the container with h5repack's own non-zero code.
    (tmp_path / "bad.h5").write_text("not hdf5")
    bad = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "-v", f"{tmp_path}:/work",
         h5repack_image, "h5repack", "/work/bad.h5", "/work/bad-out.h5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0
