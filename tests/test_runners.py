"""Runners: DockerRunner against the real engine (podman's Docker API), ProcessRunner
with real processes; one contract (return code, duration, log tail, timeout kills, nothing
left behind, external errors when the step cannot run at all)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import psutil
import pytest
from joblife.errors import ExternalJobError
from joblife.runners import TIMEOUT_RETURN_CODE, ContainerIsolation, ProcessRunner, RunSpec
from joblife.runners.docker import DockerRunner

from tests.support.containers import ContainerEngine


def _spec(tmp_path: Path, command: list[str], timeout: float = 30, **fields) -> RunSpec:
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True, exist_ok=True)
    return RunSpec(command, work, tmp_path / "logs" / "science.log", timeout, **fields)


def test_docker_runs_with_the_work_dir_environment_and_limits(
    container_engine: ContainerEngine, tmp_path: Path
):
    runner = DockerRunner(container_engine.base_url)
    script = "echo hello $GREETING; id -u; echo made > /work/output/out.txt; exit 3"
    spec = _spec(
        tmp_path,
        ["sh", "-c", script],
        image=container_engine.image,
        environment={"GREETING": "partner"},
        user="0:0",
        cpus=1,
        memory_mib=128,
    )
    result = runner.run(spec)
    assert result.return_code == 3
    # Root on a root worker is the unprivileged user, who was given the work dir.
    uid = "65534" if os.geteuid() == 0 else "0"
    assert result.log_tail == ["hello partner", uid]
    assert (spec.work_dir / "output" / "out.txt").read_text() == "made\n"
    assert spec.log_path.read_text() == f"hello partner\n{uid}\n"
    assert result.image and result.image.startswith(f"{container_engine.image}@sha256:")
    assert result.duration > 0 and not result.timed_out
    assert container_engine.leftovers() == []


def test_docker_times_create_and_remove_apart_from_the_run(
    container_engine: ContainerEngine, tmp_path: Path
):
    """``duration`` is start → end of the wait; creating and removing are timed apart."""
    spec = _spec(tmp_path, ["sleep", "1"], image=container_engine.image)
    start = time.monotonic()
    result = DockerRunner(container_engine.base_url).run(spec)
    elapsed = time.monotonic() - start
    create, remove = result.details["create_seconds"], result.details["remove_seconds"]
    assert 1 <= result.duration < elapsed - create - remove + 0.01
    assert 0 < create < elapsed - 1 and 0 < remove < elapsed - 1
    assert result.summary["create_seconds"] == create  # in the status details


def test_docker_applies_user_network_and_flavor_limits(
    container_engine: ContainerEngine, tmp_path: Path
):
    """What the container sees from inside: the user it runs as, no network but loopback
    (``network_mode="none"``, the default), and the flavor's memory and CPU limits in its
    cgroup (v2 or v1 layout)."""
    script = (
        "id -u; ls /sys/class/net; "
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    )
    spec = _spec(
        tmp_path,
        ["sh", "-c", script],
        image=container_engine.image,
        user="1234:1234",
        cpus=0.5,
        memory_mib=96,
    )
    result = DockerRunner(container_engine.base_url).run(spec)
    assert result.return_code == 0, result.log_tail
    uid, interfaces, memory, cpu = result.log_tail
    assert uid == "1234"
    assert interfaces == "lo"
    assert int(memory) == 96 * 1024 * 1024
    assert int(cpu.split()[0]) == 50_000  # quota per 100 ms period: half a CPU
    assert container_engine.leftovers() == []


def test_docker_without_resource_limits_leaves_the_cgroup_unlimited(
    container_engine: ContainerEngine, tmp_path: Path
):
    script = (
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    spec = _spec(tmp_path, ["sh", "-c", script], image=container_engine.image, memory_mib=96)
    result = DockerRunner(container_engine.base_url, resource_limits=False).run(spec)
    assert result.return_code == 0, result.log_tail
    assert result.log_tail[0] != str(96 * 1024 * 1024)


def test_docker_log_tail_keeps_the_last_lines(container_engine: ContainerEngine, tmp_path: Path):
    spec = _spec(
        tmp_path,
        ["sh", "-c", "i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); done"],
        image=container_engine.image,
        log_tail_lines=3,
    )
    result = DockerRunner(container_engine.base_url).run(spec)
    assert result.return_code == 0
    assert result.log_tail == ["line 97", "line 98", "line 99"]
    assert len(spec.log_path.read_text().splitlines()) == 100


def test_docker_timeout_kills_and_removes_the_container(
    container_engine: ContainerEngine, tmp_path: Path
):
    spec = _spec(
        tmp_path, ["sh", "-c", "echo started; sleep 60"], timeout=1.5, image=container_engine.image
    )
    start = time.monotonic()
    result = DockerRunner(container_engine.base_url).run(spec)
    assert time.monotonic() - start < 15
    assert result.timed_out and result.return_code == TIMEOUT_RETURN_CODE
    assert result.log_tail == ["started"]
    assert container_engine.leftovers() == []


def test_docker_missing_image_is_an_external_error(
    container_engine: ContainerEngine, tmp_path: Path
):
    spec = _spec(tmp_path, ["true"], image="localhost/joblife-no-such-image:1")
    with pytest.raises(ExternalJobError, match="is not on this worker's container engine"):
        DockerRunner(container_engine.base_url).run(spec)
    with pytest.raises(ExternalJobError, match="pulling is disabled"):
        DockerRunner(container_engine.base_url, pull_missing=False).run(spec)


def test_docker_engine_down_is_an_external_error(tmp_path: Path):
    spec = _spec(tmp_path, ["true"], image="localhost/whatever:1")
    with pytest.raises(ExternalJobError, match=r"container engine at .* does not answer"):
        DockerRunner(f"unix://{tmp_path}/no-engine.sock").run(spec)


def test_process_runs_in_the_work_dir_with_its_environment(tmp_path: Path):
    spec = _spec(
        tmp_path,
        ["sh", "-c", 'echo "in $(pwd) $GREETING" ; echo err >&2; exit 5'],
        environment={"GREETING": "hi"},
    )
    result = ProcessRunner().run(spec)
    assert result.return_code == 5
    assert result.log_tail == [f"in {spec.work_dir} hi", "err"]
    assert result.image is None


def test_process_timeout_kills_the_whole_process_group(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    # 3 s: the shell has written the pid file by then, even on a loaded machine.
    spec = _spec(tmp_path, ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=3)
    result = ProcessRunner().run(spec)
    assert result.timed_out and result.return_code == TIMEOUT_RETURN_CODE
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # SIGKILL went to the whole group before run() returned; the kernel ends the grandchild
    # a moment later (seen still "running" right after, once in CI): a short bound.
    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"


def test_process_crash_by_signal_reports_128_plus_the_signal(tmp_path: Path):
    result = ProcessRunner().run(_spec(tmp_path, ["sh", "-c", "kill -9 $$"]))
    assert result.return_code == 128 + 9


def test_process_missing_executable_is_an_external_error(tmp_path: Path):
    with pytest.raises(ExternalJobError, match="cannot start the science command"):
        ProcessRunner().run(_spec(tmp_path, ["/nonexistent/science-code"]))


#: Every write to it fails with ENOSPC, as on a full disk.
FULL_DEVICE = Path("/dev/full")


def test_process_log_on_a_full_disk_drains_the_output_and_reports_it(tmp_path: Path):
    """The step writes far more than a pipe holds: were the pipe not drained once the log
    cannot be written, it would block until its timeout."""
    spec = dataclasses.replace(
        _spec(tmp_path, ["sh", "-c", "yes output | head -c 700000; echo the end"], 20),
        log_path=FULL_DEVICE,
    )
    start = time.monotonic()
    result = ProcessRunner().run(spec)
    assert time.monotonic() - start < 10
    assert result.return_code == 0 and not result.timed_out
    assert result.log_tail[-2:] == ["output", "the end"]  # still kept in memory
    assert result.details["log_error"] == (
        f"could not write {FULL_DEVICE} (700008 of 700008 bytes of output dropped): "
        "No space left on device"
    )


def test_docker_log_on_a_full_disk_keeps_the_tail_and_reports_it(
    container_engine: ContainerEngine, tmp_path: Path
):
    spec = dataclasses.replace(
        _spec(tmp_path, ["sh", "-c", "echo first; echo last"], image=container_engine.image),
        log_path=FULL_DEVICE,
    )
    result = DockerRunner(container_engine.base_url).run(spec)
    assert result.return_code == 0
    assert result.log_tail == ["first", "last"]
    assert "No space left on device" in result.details["log_error"]
    assert container_engine.leftovers() == []


@pytest.mark.parametrize(
    ("euid", "user", "isolation", "expected"),
    [
        (0, None, ContainerIsolation(), "65534:65534"),  # the image's user may be root
        (0, "0:0", ContainerIsolation(), "65534:65534"),
        (0, "root", ContainerIsolation(), "65534:65534"),
        (0, "1000:1000", ContainerIsolation(), "1000:1000"),
        (0, "0:0", ContainerIsolation(allow_root=True), "0:0"),  # relaxed explicitly
        (1000, "1000:1000", ContainerIsolation(), "1000:1000"),
        (1000, None, ContainerIsolation(), None),  # not root: the image's user, no change
    ],
)
def test_docker_never_runs_root_because_the_worker_is_root(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    euid: int,
    user: str | None,
    isolation: ContainerIsolation,
    expected: str | None,
):
    """The user choice itself, whatever user this test runs as (the container tests of
    tests/test_science_sandbox.py check it inside a real container, as root only)."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    spec = RunSpec(
        ["true"], tmp_path, tmp_path / "log", 5, image="x", user=user, isolation=isolation
    )
    assert DockerRunner(unprivileged_user="65534:65534").user(spec) == expected


def test_docker_isolation_options_by_default_and_relaxed(tmp_path: Path):
    runner = DockerRunner(pids_limit=256)
    spec = RunSpec(["true"], tmp_path, tmp_path / "log", 5, image="x")
    environment: dict[str, str] = {}
    options = runner._isolation(spec, environment)
    assert options["cap_drop"] == ["ALL"] and "cap_add" not in options
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["read_only"] is True and "/tmp" in options["tmpfs"]
    assert options["pids_limit"] == 256
    assert environment == {"HOME": "/tmp"}  # a writable HOME on a read-only root
    relaxed = dataclasses.replace(
        spec,
        isolation=ContainerIsolation(
            read_only_root=False,
            no_new_privileges=False,
            capabilities=frozenset({"CHOWN"}),
            pids_limit=-1,
        ),
    )
    options = runner._isolation(relaxed, {})
    assert options == {"cap_drop": ["ALL"], "cap_add": ["CHOWN"]}
