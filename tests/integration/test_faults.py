"""Faults: a driver killed mid-write, Redis down, a full disk, an unwritable home.

Every case starts from a copy of the session's local pipeline run (tests/support/pipeline.py
``baseline``) and checks what a user would: the command says what is wrong in one line
and exits non-zero, no table is left half-written (each still reads as its previous
version, with the same content hash), and the same command succeeds once the cause is
gone.

- Crash safety: a backfill in a separate driver process is ``kill -9``ed (its whole
  process group: Python driver, JVM, Python workers) while its data files are being
  written; the driver holds the write open with ``--slow-write`` so the kill provably
  lands after files were written and before the commit.
- Redis: a real ``redis-server`` this module starts and stops on its own port.
- Disk full / read-only: a tiny tmpfs (1 MiB) and a read-only remount, where the
  machine allows mounting (root with CAP_SYS_ADMIN); elsewhere those two skip and a home
  under a regular file (which no one can create) still checks the unwritable case.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import pipeline
from tests.support.servers import RedisServer, redis_executable
from tests.support.pipeline import (
    SERVICE,
    TEST_ENV,
    baseline,
    baseline_dir,
    canon_rows,
    make_log,
    make_settings,
    table_hash,
    table_version,
)

pytestmark = pytest.mark.integration

DRIVER = Path(pipeline.__file__)  # also a script: a separate driver process
PERSONA = str(Path(sys.executable).parent / "persona")
SILVER = ("silver.user_sequences", "silver.user_behaviour")


@pytest.fixture(scope="module")
def first(spark, tmp_path_factory):
    return baseline(spark, baseline_dir(tmp_path_factory))


def _path(home: Path, table: str) -> Path:
    layer, name = table.split(".")
    return Path(home) / "warehouse" / layer / name


def _copy(first: dict, home: Path, what=("warehouse",)) -> Path:
    for part in what:
        shutil.copytree(Path(first["home"]) / part, Path(home) / part)
    return Path(home)


def _env(**persona) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA")}
    env.update(TEST_ENV)
    env.update({"PERSONA__" + k.upper(): str(v) for k, v in persona.items()})
    return env


def _cli(home: Path, *args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([PERSONA, "--home", str(home), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The persona error lines of a failed command (log4j chatter aside), asserting
    that no stack trace reached the user."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    for marker in ("Traceback", "Py4JJavaError", "\tat org.apache"):
        assert marker not in proc.stderr, proc.stderr[-3000:]
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


# ------------------------------------------------------------------- crash safety
def _data_files(*dirs: Path) -> set[Path]:
    return {p for d in dirs if d.is_dir() for p in d.rglob("*.parquet")}


def test_kill_9_mid_write_leaves_the_previous_version(spark, first, tmp_path):
    from spark_jobs.silver import behaviour

    home = _copy(first, tmp_path / "home")
    tables = [_path(home, t) for t in SILVER]
    versions = [table_version(t) for t in tables]
    before = _data_files(*tables)
    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--home", str(home), "--input", first["input"],
             "--stages", "backfill", "--force", "--slow-write", "600"],
            env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while not (_data_files(*tables) - before):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the driver never started writing"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and Python workers
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    orphans = _data_files(*tables) - before
    assert orphans, "nothing was being written when the driver died"

    # Nothing committed: the same versions, the same rows (delta-rs and Spark agree).
    assert [table_version(t) for t in tables] == versions
    for name, t in zip(SILVER, tables):
        assert table_hash(t) == first["hashes"][name]
        assert spark.read.format("delta").load(str(t)).count() == 530

    # Re-running completes with the same content (the orphans are simply not in the log).
    settings = make_settings(home)
    start, end = dt.date.fromisoformat(first["first_day"]), dt.date.fromisoformat(first["last_day"])
    s = behaviour.run_backfill(spark, settings, start, end, force=True)
    assert s["days_built"] == 10
    for name, t, v in zip(SILVER, tables, versions):
        assert table_version(t) == v + 1
        assert table_hash(t) == first["hashes"][name]


# -------------------------------------------------------------------------- Redis
@pytest.fixture
def redis_proc(tmp_path):
    """A redis-server this test starts and stops (on the same port each time)."""
    if redis_executable() is None:
        if os.environ.get("PERSONA_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server not installed")
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def test_redis_down_during_materialize_and_get(spark, first, tmp_path, redis_proc):
    from persona.serving.store import apply

    home = _copy(first, tmp_path / "home", ("warehouse", "models"))
    feast = {"feast__online_store": "redis", "feast__redis_connection": f"127.0.0.1:{redis_proc.port}",
             "feast__project": "persona_faults"}
    redis_proc.start()
    apply(make_settings(home, **feast), spark=spark)
    redis_proc.stop()

    env = _env(**feast)
    down = _cli(home, "materialize", env=env)
    lines = _error_lines(down)
    assert len(lines) == 1 and "Redis" in lines[0] and "unreachable" in lines[0], down.stderr[-2000:]
    user = first["users"][0]
    get_down = _cli(home, "get", user, "--service", SERVICE, "--json", env=env)
    lines = _error_lines(get_down)
    assert len(lines) == 1 and "Redis" in lines[0], get_down.stderr[-2000:]

    redis_proc.start()
    up = _cli(home, "materialize", env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    got = _cli(home, "get", *first["users"], "--service", SERVICE, "--json", env=env)
    assert got.returncode == 0, got.stderr[-3000:]
    import json

    rows = [json.loads(ln) for ln in got.stdout.splitlines() if ln.startswith("{")]
    assert canon_rows(rows) == first["online"]


# ------------------------------------------------------------ disk full, unwritable
@pytest.fixture
def mounts():
    """mount(path, options) for tmpfs mounts unmounted afterwards; skips where the
    machine does not allow mounting."""
    done: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
        done.append(path)
        return path

    def remount(path: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    mount.remount = remount
    try:
        yield mount
    finally:
        for p in reversed(done):
            subprocess.run(["umount", "-l", str(p)], capture_output=True)


def test_home_under_a_regular_file_fails_in_one_line(first, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the home's parent should be")
    t0 = time.monotonic()
    proc = _cli(blocker / "home", "ingest", first["input"], env=_env())
    lines = _error_lines(proc)
    assert len(lines) == 1 and "not writable" in lines[0] and "Not a directory" in lines[0], proc.stderr
    assert time.monotonic() - t0 < 120  # before any Spark work


def test_read_only_home_fails_before_touching_tables(first, tmp_path, mounts):
    root = mounts(tmp_path / "ro", "size=4m")
    home = _copy(first, root / "home")
    bronze = _path(home, "bronze.events")
    version = table_version(bronze)
    mounts.remount(root, "ro")
    proc = _cli(home, "ingest", first["input"], env=_env())
    lines = _error_lines(proc)
    assert len(lines) == 1 and "Read-only file system" in lines[0], proc.stderr
    assert table_version(bronze) == version
    assert table_hash(bronze) == first["hashes"]["bronze.events"]


def test_disk_full_mid_ingest_commits_nothing(first, tmp_path, mounts):
    bigger = make_log(tmp_path / "bigger", users=300, days=10, seed=9)
    root = mounts(tmp_path / "full", "size=1m")
    home = root / "home"
    shutil.copytree(_path(first["home"], "bronze.events"), _path(home, "bronze.events"))
    bronze = _path(home, "bronze.events")
    version = table_version(bronze)
    proc = _cli(home, "ingest", str(bigger), env=_env())
    lines = _error_lines(proc)
    assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr[-3000:]
    # No half-written table: the same version and rows, whatever orphan files remain.
    assert table_version(bronze) == version
    assert table_hash(bronze) == first["hashes"]["bronze.events"]
