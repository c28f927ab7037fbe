"""`persona apply / materialize / get / serve / training-set` as a user runs them.

Tables are planted in-process (the shared Spark session); every command then runs as a
subprocess of the installed ``persona`` entry point, as a user would.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import feast_data as planted

pytestmark = pytest.mark.e2e

PERSONA = str(Path(sys.executable).with_name("persona"))


def _run(home, *args, env=None, timeout=900):
    import os

    full_env = dict(os.environ)
    for k in list(full_env):
        if k.startswith("PERSONA"):
            full_env.pop(k)
    full_env.update(env or {})
    return subprocess.run([PERSONA, "--home", str(home), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def home(spark, module_settings):
    """Two snapshots of three users, via the same planting code as the integration test."""
    for k, users in ((2, ["u1", "u2"]), (3, ["u1", "u2", "u3"])):
        planted.write_snapshot(spark, module_settings, k, users)
    return module_settings.home, planted


@pytest.fixture(scope="module")
def materialized(home):
    h, _ = home
    env = {"PERSONA__SPARK__MASTER": "local[2]"}
    applied = _run(h, "apply", "--json", env=env)
    assert applied.returncode == 0, applied.stderr[-3000:]
    mat = _run(h, "materialize", "--json", env=env)
    assert mat.returncode == 0, mat.stderr[-3000:]
    return h, json.loads(applied.stdout), json.loads(mat.stdout)


def test_apply_and_materialize_summaries(materialized):
    _, applied, mat = materialized
    assert applied["services"] == ["ranking_light_v1", "recommender_v1"]
    assert mat["mode"] == "incremental" and mat["views"]["user_behaviour"] == 3
    assert mat["online_store"] == "sqlite"


def test_get_json_one_object_per_user_and_unknown_note(materialized, home):
    h, _, _ = materialized
    _, planted = home
    res = _run(h, "get", "u1", "ghost", "u3", "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["user_id"] for r in rows] == ["u1", "ghost", "u3"]
    assert rows[0]["views_7d"] == planted.planted(3, "u1") and len(rows[0]["user_emb"]) == 3
    assert all(v is None for k, v in rows[1].items() if k != "user_id")
    assert "no online features for user 'ghost'" in res.stderr
    light = _run(h, "get", "u2", "--service", "ranking_light_v1", "--json")
    assert set(json.loads(light.stdout)) == {"user_id", "profile_vec", "segment_id", "views_7d", "carts_7d",
                                             "purchases_30d", "spend_30d", "days_since_last_event"}


def test_training_set_cli(materialized, home, tmp_path, spark):
    h, _, _ = materialized
    _, planted = home
    entities = tmp_path / "entities.csv"
    stamp = planted.end_of(planted.DAYS[3]) + dt.timedelta(hours=1)
    entities.write_text(f"user_id,event_timestamp\nu1,{stamp.isoformat()}\nu3,{stamp.isoformat()}\n")
    out = tmp_path / "train"
    res = _run(h, "training-set", "--entities", str(entities), "--out", str(out), "--json",
               env={"PERSONA__SPARK__MASTER": "local[2]"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["rows"] == 2
    got = {r["user_id"]: r for r in spark.read.parquet(str(out)).collect()}
    assert got["u1"]["views_7d"] == planted.planted(3, "u1") and got["u3"]["segment_id"] == planted.planted(3, "u3")


@pytest.mark.parametrize("args, env, message, code", [
    (["get", "u1"], {"PERSONA__FEAST__ONLINE_STORE": "redis", "PERSONA__FEAST__REDIS_CONNECTION": "127.0.0.1:1"},
     "Redis online store at 127.0.0.1:1 is unreachable", 4),
    (["get", "u1", "--service", "nope_v9"], {}, "unknown feature service 'nope_v9' (registered: ranking_light_v1, recommender_v1)", 2),
    (["training-set", "--entities", "/no/such.csv", "--out", "/tmp/x"], {}, "entity file not found", 2),
    (["materialize", "--start", "yesterday"], {}, "not a date or ISO timestamp", 2),
])
def test_user_errors_are_one_line(materialized, args, env, message, code):
    h, _, _ = materialized
    res = _run(h, *args, env=env)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == code, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr[-2000:]


def test_get_before_apply_says_what_to_do(tmp_path):
    res = _run(tmp_path / "empty-home", "get", "u1")
    assert res.returncode == 3
    assert "persona apply" in res.stderr and "Traceback" not in res.stderr


def test_serve_answers_on_loopback(materialized, home):
    h, _, _ = materialized
    _, planted = home
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA")}
    proc = subprocess.Popen([PERSONA, "--home", str(h), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                body = json.dumps({"feature_service": "recommender_v1", "entities": {"user_id": ["u2"]}})
                conn.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"server did not come up: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        data = json.loads(resp.read())
        assert resp.status == 200
        names = data["metadata"]["feature_names"]
        values = {n: r["values"][0] for n, r in zip(names, data["results"])}
        assert values["views_7d"] == planted.planted(3, "u2")
        # Bound to loopback only: the machine's other addresses do not answer.
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening and all("127.0.0.1:" in line for line in listening.splitlines()), listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)
