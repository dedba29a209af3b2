"""``workers/build-local-image.sh python`` builds a partner's Python science image with no
registry: the host's Python install and a venv holding the science step go into an image
``FROM scratch``. The partner guide's recipe, on its worked example (``examples/joblife-ndvi``):
a venv of its own with the package and numpy, the image built from it, a Python one-liner
run in it with podman, and the science step run in it by joblife's own container runner."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from joblife.runners import RunSpec
from joblife.runners.docker import DockerRunner

from tests.support.containers import ContainerEngine
from tests.support.services import unavailable

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workers" / "build-local-image.sh"
EXAMPLE = REPO / "examples" / "joblife-ndvi"
# A tag of its own per session: concurrent test runs must not remove each other's image.
IMAGE = f"localhost/joblife-test-ndvi:{uuid.uuid4().hex[:8]}"


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_usage_errors_are_refused_before_anything_is_built(tmp_path: Path) -> None:
    no_name = _build("python", "--venv", str(tmp_path))
    assert (no_name.returncode, no_name.stdout) == (2, "")
    assert "python needs --name IMAGE" in no_name.stderr
    unknown = _build("python", "--name", IMAGE, "--bogus")
    assert unknown.returncode == 2
    assert "unknown argument: --bogus" in unknown.stderr
    both = _build("python", "--name", IMAGE, "--venv", str(tmp_path), "--python", "python3")
    assert both.returncode == 2
    assert "give --venv or --python, not both" in both.stderr
    not_a_venv = _build("python", "--name", IMAGE, "--venv", str(tmp_path))
    assert not_a_venv.returncode == 1
    assert f"not a virtual environment: {tmp_path}" in not_a_venv.stderr


def _science_venv(root: Path) -> Path:
    """The recipe's first step: a venv of its own with the partner's package (without its
    dependencies: joblife is not needed to run the science step) and numpy."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # pip builds in the source tree: build a copy, leave the repository's example alone.
    source = shutil.copytree(EXAMPLE, root / "joblife-ndvi")
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    # `pip install numpy` would download it; offline, the venv gets the very files this
    # environment's numpy distribution installed (its RECORD), scripts outside site excepted.
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", purelib],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    numpy_dist = importlib.metadata.distribution("numpy")
    for file in numpy_dist.files or []:
        if file.parts[0] == "..":
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(numpy_dist.locate_file(file)), target)
    return venv


@pytest.fixture(scope="module")
def ndvi_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ndvi science image, built by the script from a venv of its own."""
    if shutil.which("podman") is None:
        unavailable("podman not installed (scripts/container-engine.sh)")
    venv = _science_venv(tmp_path_factory.mktemp("ndvi-image"))
    built = _build(
        "python", "--name", IMAGE, "--venv", str(venv),
        "--check", "import joblife_ndvi.science, numpy; print('ndvi', numpy.__version__)",
    )  # fmt: skip
    try:
        assert built.returncode == 0, built.stderr
        # The script's own check ran the one-liner in the image, isolated like a science step.
        assert f"built {IMAGE}: ndvi {np.__version__}" in built.stderr
        yield IMAGE
    finally:
        _podman("rmi", "-f", IMAGE)


@pytest.mark.slow
def test_the_image_runs_the_partners_module_on_the_hosts_python(ndvi_image: str) -> None:
    """The partner's module and numpy import in the image, on the host's Python; nothing of
    the host's other packages (joblife) is there, and the shell is busybox's."""
    code = (
        "import importlib.util, json, sys, numpy, joblife_ndvi.science as s; "
        "print(json.dumps({'python': list(sys.version_info[:3]), 'numpy': numpy.__version__, "
        "'module': s.__file__, 'joblife': importlib.util.find_spec('joblife') is not None, "
        "'ndvi': s.ndvi(numpy.array([[1, 0]]), numpy.array([[3, 0]])).tolist()}))"
    )
    done = _podman("run", "--rm", "--network", "none", ndvi_image, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["python"] == list(sys.version_info[:3])
    assert said["numpy"] == np.__version__
    base_site = subprocess.run(
        [os.path.realpath(sys._base_executable), "-I", "-c",
         "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()  # fmt: skip
    assert said["module"] == f"{base_site}/joblife_ndvi/science.py"
    assert said["joblife"] is False
    assert said["ndvi"][0][0] == pytest.approx((3 - 1) / (3 + 1))
    assert np.isnan(said["ndvi"][0][1])  # both bands 0: no data
    shell = _podman("run", "--rm", ndvi_image, "sh", "-c", "echo $PATH; pwd")
    assert shell.stdout.split() == ["/usr/local/bin:/usr/bin:/bin", "/work"], shell.stderr


@pytest.mark.slow
def test_the_image_is_a_science_image_for_the_docker_runner(
    ndvi_image: str, container_engine: ContainerEngine, tmp_path: Path
) -> None:
    """joblife's container runner runs the science step in the image (its isolation: a
    read-only root, nobody, no network, no capabilities) on a work dir it mounts."""
    work = tmp_path / "work"
    (work / "input").mkdir(parents=True)
    (work / "output").mkdir()
    rng = np.random.default_rng(17)
    red = rng.integers(0, 4000, size=(24, 32), dtype=np.uint16)
    nir = rng.integers(0, 4000, size=(24, 32), dtype=np.uint16)
    red[0, :4] = nir[0, :4] = 0  # no data
    np.save(work / "input" / "red.npy", red)
    np.save(work / "input" / "nir.npy", nir)

    result = DockerRunner(base_url=container_engine.base_url, pull_missing=False).run(
        RunSpec(
            command=["python", "-m", "joblife_ndvi.science", "/work/input",
                     "/work/output/ndvi.npy", "--threshold", "0.2"],
            work_dir=work,
            log_path=tmp_path / "science.log",
            timeout=120,
            image=ndvi_image,
        )
    )  # fmt: skip

    assert result.return_code == 0, result.log_tail
    assert result.image is not None and result.image.startswith(f"{ndvi_image}@")
    total = nir.astype(np.float64) + red
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(total == 0, np.nan, (nir.astype(np.float64) - red) / total)
    written = np.load(work / "output" / "ndvi.npy")
    assert written.dtype == np.float32
    np.testing.assert_allclose(written, expected, rtol=1e-6, equal_nan=True)
    summary = json.loads(result.log_tail[-1])
    valid = ~np.isnan(expected)
    assert summary["pixels"] == int(valid.sum())
    assert summary["vegetated_share"] == pytest.approx((expected[valid] > 0.2).mean(), abs=1e-4)


def test_the_build_scripts_parse() -> None:
    """bash -n over the script and the helpers it sources."""
    for script in (SCRIPT, REPO / "workers" / "local-image" / "rootfs.sh"):
        checked = subprocess.run(
            ["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
        )
        assert checked.returncode == 0, checked.stderr
