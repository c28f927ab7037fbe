"""Scale-out: the whole pipeline on a real Spark standalone cluster equals the local run.

A master and two single-core workers start from the pyspark installation on 127.0.0.1
(tests/support/cluster.py). The pipeline runs in a separate driver process
(tests/support/pipeline.py) with ``spark.master=spark://...``, Redis as the online store,
and executors that can NOT import the project from the source tree: the code reaches
them only as the archive the session ships (``spark_jobs.session.ship_code``), the
encoder through ``SparkContext.addFile`` (``spark_jobs.gold.embed.ship_model``).

Compared with the local run (tests/support/pipeline.py ``baseline``: local[2], SQLite):
a content hash per table (sorted rows, compute-time columns dropped, floats to 1e-5),
and the online features Feast serves for sample users. Then one worker (JVM, executor and
Python workers) is killed with SIGKILL in the middle of a behaviour backfill: the job
finishes on the remaining worker with identical output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# tests/ is on sys.path (pytest puts the rootdir conftest's folder there).
from tests.support.cluster import StandaloneCluster
from tests.support import pipeline
from tests.support.pipeline import ALL_STAGES, TEST_ENV, baseline, baseline_dir, table_version, warehouse_hashes

pytestmark = pytest.mark.integration

DRIVER = Path(pipeline.__file__)  # also a script: a separate driver process
SILVER = ("silver.user_sequences", "silver.user_behaviour")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StandaloneCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def local(spark, tmp_path_factory):
    return baseline(spark, baseline_dir(tmp_path_factory))


def _driver_env(cluster: StandaloneCluster, **persona) -> dict:
    env = cluster.driver_env(**persona)
    env.update({k: v for k, v in TEST_ENV.items() if k != "PERSONA__SPARK__MASTER"})
    return env


def _run_driver(args: list[str], env: dict, log: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(DRIVER), *args], env=env, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=timeout)
    return proc


@pytest.fixture(scope="module")
def on_cluster(cluster, local, redis_server, tmp_path_factory):
    """The whole pipeline through the cluster: ingest .. materialize into Redis."""
    work = tmp_path_factory.mktemp("on-cluster")
    home, summary, log = work / "home", work / "summary.json", work / "driver.log"
    env = _driver_env(cluster, feast__online_store="redis", feast__redis_connection=redis_server,
                      feast__project="persona_cluster")
    proc = _run_driver(
        ["--home", str(home), "--input", local["input"], "--stages", ",".join(ALL_STAGES),
         # Training is not what is compared (TF fits are not bit-reproducible across
         # processes): the same model version, applied on the executors, is.
         "--encoder-from", local["home"], "--get", ",".join(local["users"]), "--probe",
         "--summary", str(summary)],
        env, log,
    )
    assert proc.returncode == 0, log.read_text()[-4000:]
    return json.loads(summary.read_text()) | {"home": str(home), "log": str(log)}


def test_every_table_equals_the_local_run(on_cluster, local):
    assert set(local["hashes"]) >= {"bronze.events", *SILVER, "gold.user_embeddings", "gold.user_profiles"}
    assert on_cluster["hashes"] == local["hashes"]
    assert on_cluster["fuse"]["users"] == local["fuse"]["users"] == 60


def test_executors_run_the_shipped_code(on_cluster):
    probes = on_cluster["executor_imports"]
    assert len(probes) >= 2
    for p in probes:
        assert not p["editable_finder"], "executors still see the editable install: the test proves nothing"
        for module, path in p["files"].items():
            assert "persona-code-" in path and ".zip" in path, (module, path)


def test_online_features_from_redis_equal_local_sqlite(on_cluster, local):
    assert on_cluster["materialize"]["online_store"] == "redis"
    assert on_cluster["online"] == local["online"]
    assert all(v is not None for row in on_cluster["online"] for v in row.values())


def test_killing_a_worker_during_backfill_changes_nothing(cluster, local, tmp_path_factory):
    """SIGKILL one worker and its executor while the backfill runs; the job completes on
    the other worker and both silver tables equal the local run's."""
    work = tmp_path_factory.mktemp("kill-worker")
    home, summary, log = work / "home", work / "summary.json", work / "driver.log"
    shutil.copytree(Path(local["home"]) / "warehouse" / "bronze", home / "warehouse" / "bronze")
    # Two as-of days per pass: five passes, so the kill lands with work still to do.
    env = _driver_env(cluster, behaviour__backfill_chunk_days=2)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--home", str(home), "--input", local["input"],
             "--stages", "backfill", "--summary", str(summary)],
            env=env, stdout=fh, stderr=subprocess.STDOUT,
        )
    behaviour = home / "warehouse" / "silver" / "user_behaviour"
    victim = cluster.worker_daemons[1]
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 600
        # After the first pass has committed: later passes need both executors' work.
        while table_version(behaviour) is None:
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "backfill never committed its first pass"
            time.sleep(0.05)
        executors = cluster.executors(1)
        assert executors, "the victim worker runs no executor for the backfill"
        killed = victim.kill()
        assert set(executors) <= set(killed)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    result = json.loads(summary.read_text())
    assert len(result["backfill"]["passes"]) >= 4
    assert result["backfill"]["days_built"] == 10
    assert "Lost executor" in text or "lost executor" in text.lower(), "the driver never noticed the kill"
    hashes = warehouse_hashes(home)
    for table in SILVER:
        assert hashes[table] == local["hashes"][table], table
