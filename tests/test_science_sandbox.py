"""Issue 13, items 2, 3, 4 and 8: science code must not reach the host, and its output is
captured in bounded memory and space.

- the science environment is an allow-list (no worker secret reaches the step), and every
  configured secret the step prints is ``***`` in the kept tail and the log file;
- a step leaves no process behind, even a ``setsid`` daemon, at its end or its timeout;
- a container runs unprivileged on a root worker, read-only, without capabilities or new
  privileges, with a pids limit; a type relaxes these explicitly;
- capture is linear and bounded: an endless line, a huge tail, a log past its cap; a
  secret running across the cut of an over-long line is redacted whole;
- the log file is never written through a link (or a FIFO, a hard link) the step planted.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from joblife.config import Settings
from joblife.runners import (
    TIMEOUT_RETURN_CODE,
    Capture,
    ContainerIsolation,
    ProcessRunner,
    RunSpec,
    make_runner,
)
from joblife.runners.base import PROCESS_ENVIRONMENT, LogTail
from joblife.worker.context import WorkerContext
from joblife.worker.steps import science_spec

from tests.support.containers import ContainerEngine
from tests.support.example_type import ExampleJob

DB_PASSWORD = "db-pass-4711"
S3_SECRET = "s3-SECRET-value-0815"
DATABASE_URL = f"postgresql://joblife:{DB_PASSWORD}@db.example:5432/joblife"


@pytest.fixture
def secret_worker(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A worker whose environment holds its credentials, as in production."""
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("JOBLIFE_S3_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("LC_TIME", "C")
    return Settings(database_url=DATABASE_URL, s3_secret_access_key=S3_SECRET)


def _spec(tmp_path: Path, command: list[str], timeout: float = 30, **fields) -> RunSpec:
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True, exist_ok=True)
    return RunSpec(command, work, tmp_path / "logs" / "science.log", timeout, **fields)


#: Prints its environment, then the secrets as a careless science code would.
LEAKY = (
    'env; echo "connecting to $DB_URL_OF_MY_OWN with key ' + S3_SECRET + '"; '
    "echo 'pw " + DB_PASSWORD + " in http://user:hunter22@example.org/x'"
)


def _check_no_secret(spec: RunSpec, tail: list[str]) -> dict[str, str]:
    """No worker credential in the step's environment, none in the tail or the log file;
    returns the environment the step printed."""
    text = spec.log_path.read_text()
    for secret in (S3_SECRET, DB_PASSWORD, "hunter22"):
        assert secret not in text
        assert not any(secret in line for line in tail)
    assert "with key ***" in text and "pw *** in http://user:***@example.org/x" in text
    assert tail[-1] == "pw *** in http://user:***@example.org/x"
    environment = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z_]\w*=", line)
    )
    assert "JOBLIFE_DATABASE_URL" not in environment
    assert "JOBLIFE_S3_SECRET_ACCESS_KEY" not in environment
    assert environment["JOBLIFE_JOB_ID"] == "42"  # the job's own variables do reach it
    return environment


def test_process_step_gets_an_allow_listed_environment_and_is_redacted(
    secret_worker: Settings, tmp_path: Path
):
    spec = _spec(tmp_path, ["sh", "-c", LEAKY], environment={"JOBLIFE_JOB_ID": "42"})
    result = make_runner("process", secret_worker).run(spec)
    assert result.return_code == 0, result.log_tail
    environment = _check_no_secret(spec, result.log_tail)
    assert environment["PATH"] == os.environ["PATH"] and environment["LC_TIME"] == "C"
    shell = {"PWD", "SHLVL", "_", "OLDPWD"}  # set by sh itself
    allowed = {n for n in os.environ if n in PROCESS_ENVIRONMENT or n.startswith("LC_")}
    assert set(environment) <= allowed | {"JOBLIFE_JOB_ID"} | shell


def test_container_step_gets_no_worker_secret_and_is_redacted(
    secret_worker: Settings, container_engine: ContainerEngine, tmp_path: Path
):
    secret_worker.container_engine_url = container_engine.base_url
    spec = _spec(
        tmp_path,
        ["sh", "-c", LEAKY],
        image=container_engine.image,
        environment={"JOBLIFE_JOB_ID": "42"},
    )
    result = make_runner("docker", secret_worker).run(spec)
    assert result.return_code == 0, result.log_tail
    environment = _check_no_secret(spec, result.log_tail)
    assert environment["PATH"] == "/bin"  # the image's, not the worker's
    assert environment["LC_TIME"] == "C"
    assert container_engine.leftovers() == []


# -- processes that outlive their step --------------------------------------------------------
def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` ended (or is a zombie) within ``within`` seconds (a bounded poll: a
    SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@pytest.fixture
def daemon_pid(tmp_path: Path) -> Iterator[Path]:
    """Where a step's setsid daemon writes its pid; the daemon is killed after the test
    whatever happened (a failing test must not leave it running)."""
    path = tmp_path / "daemon.pid"
    yield path
    if path.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def _daemon_step(pid_file: Path, then: str) -> list[str]:
    # The daemon writes its pid once it is in its own session (killpg of the step's
    # group cannot reach it), keeps the step's output open, and sleeps forever.
    script = (
        f"setsid sh -c 'echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; "
        f"exec sleep 1000' & "
        f"while [ ! -s {pid_file} ]; do sleep 0.01; done; echo daemon started; {then}"
    )
    return ["sh", "-c", script]


def test_a_setsid_daemon_does_not_outlive_a_step_that_ends(tmp_path: Path, daemon_pid: Path):
    start = time.monotonic()
    result = ProcessRunner().run(_spec(tmp_path, _daemon_step(daemon_pid, "exit 3")))
    assert result.return_code == 3 and not result.timed_out
    assert result.log_tail == ["daemon started"]
    assert _gone(int(daemon_pid.read_text()))
    assert time.monotonic() - start < 4  # its open output did not hold the runner


def test_a_setsid_daemon_does_not_outlive_a_step_killed_at_its_timeout(
    tmp_path: Path, daemon_pid: Path
):
    spec = _spec(tmp_path, _daemon_step(daemon_pid, "sleep 1000"), timeout=3)
    result = ProcessRunner().run(spec)
    assert result.timed_out and result.return_code == TIMEOUT_RETURN_CODE
    assert _gone(int(daemon_pid.read_text()))


# -- container defaults -----------------------------------------------------------------------
#: What the container sees of its own isolation, one line each.
PROBE = (
    "id -u; (echo x > /probe && echo 'wrote /') 2>&1 || true; "
    "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
    "echo tmp > /tmp/ok && cat /tmp/ok; echo out > /work/output/out.txt && echo wrote"
)


def _probe(engine: ContainerEngine, tmp_path: Path, **fields) -> dict[str, str]:
    spec = _spec(tmp_path, ["sh", "-c", PROBE], image=engine.image, **fields)
    settings = Settings(container_engine_url=engine.base_url)
    result = make_runner("docker", settings).run(spec)
    assert result.return_code == 0, result.log_tail
    assert engine.leftovers() == []
    uid, write, *status, tmp, wrote = result.log_tail
    return {"uid": uid, "write": write, "tmp": tmp, "wrote": wrote} | dict(
        re.split(r":\s+", line, maxsplit=1) for line in status
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the worker must be root")
def test_container_defaults_on_a_root_worker(container_engine: ContainerEngine, tmp_path: Path):
    """Asked to run as root (the worker's own uid:gid, what science_spec passes on a root
    worker), the container runs unprivileged, read-only, without any capability."""
    seen = _probe(container_engine, tmp_path, user="0:0")
    assert seen["uid"] == "65534"
    assert "Read-only file system" in seen["write"] or "Permission denied" in seen["write"]
    assert seen["CapEff"] == seen["CapBnd"] == "0000000000000000"
    assert seen["NoNewPrivs"] == "1"
    assert (seen["tmp"], seen["wrote"]) == ("tmp", "wrote")  # /tmp and the work dir


def test_container_relaxing_root_is_still_read_only_and_without_capabilities(
    container_engine: ContainerEngine, tmp_path: Path
):
    seen = _probe(
        container_engine, tmp_path, user="0:0", isolation=ContainerIsolation(allow_root=True)
    )
    assert seen["uid"] == "0"
    assert "Read-only file system" in seen["write"]
    assert seen["CapEff"] == seen["CapBnd"] == "0000000000000000"
    assert seen["NoNewPrivs"] == "1"


def test_a_job_type_relaxes_the_isolation_explicitly(
    container_engine: ContainerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Through the type's class attributes and science_spec, as the worker runs it."""
    # Root alone cannot write to the image's / (mode 555) without CAP_DAC_OVERRIDE.
    relaxed = ContainerIsolation(
        allow_root=True,
        read_only_root=False,
        no_new_privileges=False,
        capabilities=frozenset({"CHOWN", "DAC_OVERRIDE"}),
    )
    monkeypatch.setattr(ExampleJob, "SCIENCE_ISOLATION", relaxed)
    monkeypatch.setattr(ExampleJob, "SCIENCE_USER", "0:0")
    monkeypatch.setattr(ExampleJob, "SCIENCE_IMAGE", container_engine.image)
    monkeypatch.setattr(ExampleJob, "SCIENCE_COMMAND", ["sh", "-c", PROBE])
    settings = Settings(container_engine_url=container_engine.base_url)
    context = WorkerContext(1, 1, settings, tmp_path / "work", heartbeat=None)  # type: ignore[arg-type]
    (context.work_dir / "output").mkdir(parents=True)
    job = ExampleJob(id=1, unique_id=uuid.uuid4())
    spec = science_spec(job, context)
    assert spec.isolation is relaxed
    result = make_runner("docker", settings).run(spec)
    assert result.return_code == 0, result.log_tail
    uid, write, *status, tmp, wrote = result.log_tail
    assert (uid, write, tmp, wrote) == ("0", "wrote /", "tmp", "wrote")
    caps = dict(re.split(r":\s+", line, maxsplit=1) for line in status)
    assert int(caps["CapEff"], 16) == 0b11  # CAP_CHOWN (0) and CAP_DAC_OVERRIDE (1) alone
    assert caps["NoNewPrivs"] == "0"


def test_container_pids_limit(container_engine: ContainerEngine, tmp_path: Path):
    spec = _spec(
        tmp_path,
        ["sh", "-c", "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"],
        image=container_engine.image,
    )
    settings = Settings(container_engine_url=container_engine.base_url, container_pids_limit=77)
    assert make_runner("docker", settings).run(spec).log_tail == ["77"]
    spec = _spec(
        tmp_path / "own",
        spec.command,
        image=container_engine.image,
        isolation=ContainerIsolation(pids_limit=33),
    )
    assert make_runner("docker", settings).run(spec).log_tail == ["33"]


# -- bounded capture -------------------------------------------------------------------------
MIB = 1024 * 1024


def test_an_endless_line_is_captured_in_bounded_memory(tmp_path: Path):
    """32 MiB without a newline in 64 KiB chunks: the line in memory never exceeds its cut,
    the file stops at its cap, the tail keeps the line's start and says it was cut."""
    capture = Capture(secrets=(S3_SECRET,), file_max_bytes=1 * MIB)
    tail = LogTail(tmp_path / "science.log", 40, capture)
    bound = 3 * capture.line_max_bytes + capture.tail_max_bytes  # redaction window, head
    chunk = b"x" * (64 * 1024)
    tracemalloc.start()
    try:
        for _ in range(32 * MIB // len(chunk)):
            tail.write(chunk)
            assert tail.buffered <= bound
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * MIB  # nothing the size of the line was ever held
    [line] = tail.close()
    assert line.startswith("x" * 2000) and len(line) < capture.line_max_bytes + 100
    assert line.endswith("more bytes of this line in the log file]")
    assert (tmp_path / "science.log").stat().st_size == 1 * MIB
    assert tail.problem()["log_dropped_bytes"] == 31 * MIB


def test_the_kept_tail_is_bounded_in_lines_and_bytes(tmp_path: Path):
    capture = Capture(tail_max_bytes=4096, line_max_bytes=512)
    tail = LogTail(tmp_path / "science.log", 40, capture)
    for i in range(2000):
        tail.write(f"{i:04d} ".encode() + b"y" * 195 + b"\n")  # 201 bytes a line
    tail.write(b"z" * 3000 + b"\nlast")
    lines = tail.close()
    assert sum(len(line.encode()) for line in lines) <= 4096
    assert lines[-1] == "last" and lines[-2].startswith("z" * 512 + " [... 2488 more")
    # The newest whole lines that fit: one more would not have.
    assert lines[-3].startswith("1999 ")
    assert sum(len(line.encode()) for line in lines) + 201 > 4096
    assert len((tmp_path / "science.log").read_bytes()) == 2000 * 201 + 3001 + 4


def test_a_secret_across_chunks_or_a_long_line_cut_is_redacted(tmp_path: Path):
    capture = Capture(secrets=(S3_SECRET,), line_max_bytes=256)
    tail = LogTail(tmp_path / "science.log", 40, capture)
    half = len(S3_SECRET) // 2
    tail.write(f"key {S3_SECRET[:half]}".encode())
    tail.write(f"{S3_SECRET[half:]} end\n".encode())
    # An over-long line with no blank, the secret right where it would be cut.
    tail.write(b"a" * (256 - half) + S3_SECRET.encode() + b"b" * 600 + b"\n")
    # An over-long line of words, a URL password where the line would be cut.
    tail.write(b"w " * 120 + b"http://u:hunter22@h/" + b" w" * 200 + b"\n")
    lines = tail.close()
    text = (tmp_path / "science.log").read_text()
    assert S3_SECRET not in text and "hunter22" not in text
    assert text.count("***") == 3
    assert lines[0] == "key *** end"
    assert not any(S3_SECRET in line or "hunter22" in line for line in lines)


#: Secrets that are only recognised whole: a piece on each side of a cut looks harmless.
CUT_SECRETS = {
    "http://user:hunter2pass@db.example/x": "hunter2pass",
    "https://s3.example/b/k?X-Amz-Signature=abcdef123&X-Amz-Date=1": "abcdef123",
    "password=hunter2word": "hunter2word",
    "Authorization: Bearer eyJhbGciOi.payload.sig": "eyJhbGciOi.payload.sig",
    S3_SECRET: S3_SECRET,
}


@pytest.mark.parametrize("text", list(CUT_SECRETS))
def test_a_secret_running_across_the_cut_of_a_long_line_is_redacted_whole(
    tmp_path: Path, text: str
):
    """A line with no blank, ``text`` at every offset around its first and second cut (and
    across the end of the redaction window): neither piece of the secret reaches the file
    or the tail, whether the line comes at once or byte by byte."""
    line_max = 64
    secret = CUT_SECRETS[text].encode()
    offsets = [*range(line_max - len(text), line_max + 1), *range(2 * line_max - len(text), 200)]
    for offset in offsets:
        for whole in (True, False):
            log = tmp_path / f"{offset}-{whole}.log"
            tail = LogTail(log, 40, Capture(secrets=(S3_SECRET,), line_max_bytes=line_max))
            data = b"-" * offset + text.encode() + b'"' + b"y" * 300 + b"\nend\n"
            for chunk in [data] if whole else [data[i : i + 1] for i in range(len(data))]:
                tail.write(chunk)
            lines = tail.close()
            written = log.read_bytes()
            for piece in (secret[:6], secret[-6:]):  # neither end of it, on either side
                assert piece not in written, (offset, written)
                assert not any(piece.decode() in line for line in lines), (offset, lines)
            assert b"***" in written and written.endswith(b"y\nend\n")


def test_the_log_is_never_written_through_what_the_step_planted(tmp_path: Path):
    """A step that can write in the work dir replaced ``science.log`` or ``logs`` by a link
    to a host file or folder, a hard link to a host file, a FIFO: the worker (root, maybe)
    writes nothing through it, the next step still runs and ``log_error`` says why."""
    host = tmp_path / "host"
    host.mkdir()
    host_file = host / "authorized_keys"
    host_file.write_text("host content\n")
    spec = _spec(tmp_path, ["sh", "-c", "echo ssh-ed25519 AAAA attacker"])
    logs = spec.log_path.parent

    def plant(kind: str) -> None:
        if logs.is_symlink() or logs.is_file():
            logs.unlink()
        elif logs.exists():
            for entry in logs.iterdir():
                entry.unlink()
            logs.rmdir()
        if kind == "logs -> host":
            logs.symlink_to(host, target_is_directory=True)
            return
        logs.mkdir()
        if kind == "link":
            spec.log_path.symlink_to(host_file)
        elif kind == "dangling link":
            spec.log_path.symlink_to(host / "science.log")
        elif kind == "hard link":
            os.link(host_file, spec.log_path)
        elif kind == "fifo":
            os.mkfifo(spec.log_path)

    for kind, what in [
        ("link", "it is a symbolic link (not followed)"),
        ("dangling link", "it is a symbolic link (not followed)"),
        ("logs -> host", f"{logs} is a symbolic link (not followed)"),
        ("hard link", "it has 2 hard links"),
        ("fifo", "it is a FIFO or a socket"),
    ]:
        plant(kind)
        result = ProcessRunner().run(spec)
        assert result.return_code == 0, kind
        assert result.log_tail == ["ssh-ed25519 AAAA attacker"], kind
        assert result.details["log_error"].startswith(
            f"could not write {spec.log_path} (26 of 26 bytes of output dropped): {what}"
        ), (kind, result.details)
        assert sorted(p.name for p in host.iterdir()) == ["authorized_keys"], kind
        assert host_file.read_text() == "host content\n", kind
    # A plain log from an earlier step is appended to.
    plant("none")
    spec.log_path.write_text("step 1\n")
    result = ProcessRunner().run(spec)
    assert "log_error" not in result.details
    assert spec.log_path.read_text() == "step 1\nssh-ed25519 AAAA attacker\n"


def test_bytes_that_are_not_utf8_reach_the_file_as_they_came(tmp_path: Path):
    tail = LogTail(tmp_path / "science.log", 40, Capture(secrets=(S3_SECRET,), line_max_bytes=64))
    tail.write(b"bad \xff\xfe bytes " + S3_SECRET.encode() + b"\n" + b"\xff" * 100)
    assert tail.buffered > 0
    lines = tail.close()
    assert lines[0] == "bad \ufffd\ufffd bytes ***"
    assert lines[1].startswith("\ufffd" * 64 + " [... 36 more bytes")
    assert (tmp_path / "science.log").read_bytes() == b"bad \xff\xfe bytes ***\n" + b"\xff" * 100


def test_a_step_printing_past_the_log_cap_ends_normally_with_the_drop_recorded(tmp_path: Path):
    cap = 256 * 1024
    spec = _spec(tmp_path, ["sh", "-c", "yes output | head -c 700000; echo the end"])
    result = ProcessRunner(Capture(file_max_bytes=cap)).run(spec)
    assert result.return_code == 0 and not result.timed_out
    assert result.log_tail[-2:] == ["output", "the end"]  # the tail sees all the output
    assert spec.log_path.stat().st_size == cap
    assert result.details["log_dropped_bytes"] == 700008 - cap
    assert "capped at 262144 bytes" in result.details["log_capped"]
    assert "log_error" not in result.details
