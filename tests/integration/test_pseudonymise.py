"""Optional pseudonymisation at ingest: keyed HMAC user ids, key never stored."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from core.settings import load_settings
from core.errors import InputError
from spark_jobs.bronze.ingest import run_ingest

pytestmark = pytest.mark.integration

KEY = "a-secret-key-of-32-characters-xx"
LINES = "101,10,100,pv,1511658000\n102,11,100,buy,1511658001\n101,12,100,cart,1511658002\n"


def _ingest(spark, tmp_path, name, key, monkeypatch):
    monkeypatch.setenv("PERSONA_HMAC_KEY", key)
    settings = load_settings(home=tmp_path / name, environ={"PERSONA__INGEST__PSEUDONYMISE": "true"})
    f = tmp_path / "in.csv"
    f.write_text(LINES)
    run_ingest(spark, settings, str(f), "taobao")
    df = spark.read.format("delta").load(settings.table("bronze.events"))
    return settings, sorted({r[0] for r in df.select("user_id").collect()})


def test_user_ids_are_keyed_hmacs_and_the_key_is_stored_nowhere(spark, tmp_path, monkeypatch):
    settings, ids = _ingest(spark, tmp_path, "a", KEY, monkeypatch)
    expected = sorted(hmac.new(KEY.encode(), u.encode(), hashlib.sha256).hexdigest()[:32] for u in ("101", "102"))
    assert ids == expected
    # Not an unkeyed hash either: without the key the mapping can't be recomputed.
    assert hashlib.sha256(b"101").hexdigest()[:32] not in ids
    for path in settings.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data, path
            assert b"\x00101\x00" not in data and b'"101"' not in data, path

    _, same = _ingest(spark, tmp_path, "b", KEY, monkeypatch)
    assert same == ids  # stable for a key: profiles keep joining across days
    _, other = _ingest(spark, tmp_path, "c", "another-key-of-32-characters-yyy", monkeypatch)
    assert set(other).isdisjoint(ids)


def test_missing_key_is_a_clear_error(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("PERSONA_HMAC_KEY", raising=False)
    settings = load_settings(home=tmp_path / "h", environ={"PERSONA__INGEST__PSEUDONYMISE": "true"})
    f = tmp_path / "in.csv"
    f.write_text(LINES)
    with pytest.raises(InputError, match="no key of at least 16 characters"):
        run_ingest(spark, settings, str(f), "taobao")
