"""Adapters and validation rules on tiny inline inputs, including the real samples' quirks."""

from __future__ import annotations

import datetime as dt

import pytest

from core.settings import load_settings
from core.errors import InputError
from spark_jobs.bronze import ingest

# Pure transforms on tiny inline files, through the shared Spark session.


def _parse(spark, tmp_path, text: str, fmt: str, name: str = "in.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    settings = load_settings(home=tmp_path / "home", environ={})
    df = ingest.with_event_ids(ingest.parse(spark, [str(p)], fmt, settings))
    return {r["_raw"]: r.asDict() for r in df.collect()}


def test_taobao_maps_types_and_unix_seconds(spark, tmp_path):
    rows = _parse(spark, tmp_path, "1,10,100,pv,1511658000\n2,11,101,buy,1511658001\n3,12,102,cart,1511658002\n4,13,103,fav,1511658003\n", "taobao")
    by_user = {r["user_id"]: r for r in rows.values()}
    assert {u: r["event_type"] for u, r in by_user.items()} == {"1": "view", "2": "purchase", "3": "cart", "4": "fav"}
    assert by_user["1"]["event_ts"] == dt.datetime(2017, 11, 26, 1, 0, 0)  # UTC session time zone
    assert by_user["1"]["event_date"] == dt.date(2017, 11, 26)
    assert all(r["reason"] is None for r in rows.values())
    assert by_user["1"]["source"] == "taobao"


def test_rees46_quirks_empty_fields_19_digit_ids_utc_suffix(spark, tmp_path):
    text = (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde\n"
        "2019-10-01 00:00:01 UTC,purchase,17200506,2053013559792632471,furniture.sofa,,543.10,519107250,566511c2\n"
    )
    rows = list(_parse(spark, tmp_path, text, "rees46").values())
    first = next(r for r in rows if r["item_id"] == "44600062")
    second = next(r for r in rows if r["item_id"] == "17200506")
    assert first["category_id"] == "2103807459595387724"  # exact, not a rounded double
    assert first["brand"] == "shiseido" and second["brand"] is None
    assert first["event_ts"] == dt.datetime(2019, 10, 1, 0, 0, 0)
    assert second["price"] == pytest.approx(543.10) and second["event_type"] == "purchase"
    assert first["session_id"] == "72d76fde"
    assert all(r["reason"] is None for r in rows)


def test_generic_csv_iso_timestamps_and_optional_columns(spark, tmp_path):
    text = (
        "event_id,user_id,item_id,category_id,event_type,event_ts,price,quantity,session_id,query,brand\n"
        "e1,u1,i1,c1,search,2024-01-02T03:04:05Z,,,s1,red shoes,\n"
        "e2,u1,i2,c1,purchase,2024-01-02T03:05:00+01:00,19.5,2,s1,,acme\n"
    )
    rows = {r["event_id"]: r for r in _parse(spark, tmp_path, text, "generic").values()}
    assert rows["e1"]["query"] == "red shoes" and rows["e1"]["price"] is None
    assert rows["e1"]["event_ts"] == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert rows["e2"]["event_ts"] == dt.datetime(2024, 1, 2, 2, 5, 0)  # offset normalised to UTC
    assert rows["e2"]["quantity"] == 2 and rows["e2"]["brand"] == "acme"
    assert all(r["reason"] is None for r in rows.values())


@pytest.mark.parametrize(
    "line, reason",
    [
        (",10,100,pv,1511658000", "missing_user_id"),
        ("1,,100,pv,1511658000", "missing_item_id"),
        ("1,10,100,pv,yesterday", "unparseable_timestamp"),
        ("1,10,100,pv,4102444800", "future_timestamp"),  # 2100-01-01
        ("1,10,100,pv,86400", "timestamp_too_old"),
        ("1,10,100,like,1511658000", "unknown_event_type"),
        ("1,10,100,pv", "malformed_line"),
        ("1,10,100,pv,1511658000,extra", "malformed_line"),
    ],
)
def test_taobao_validation_rules(spark, tmp_path, line, reason):
    rows = _parse(spark, tmp_path, "9,9,9,pv,1511658000\n" + line + "\n", "taobao")
    assert rows[line]["reason"] == reason
    assert rows["9,9,9,pv,1511658000"]["reason"] is None


@pytest.mark.parametrize(
    "price, quantity, reason",
    [("-1.0", "1", "negative_price"), ("abc", "1", "unparseable_price"), ("1.0", "1.5", "unparseable_quantity"),
     ("1.0", "0", "invalid_quantity"), ("1e400", "1", "unparseable_price")],
)
def test_generic_price_and_quantity_rules(spark, tmp_path, price, quantity, reason):
    text = f"user_id,item_id,event_type,event_ts,price,quantity\nu,i,cart,2024-01-01T00:00:00Z,{price},{quantity}\n"
    (row,) = _parse(spark, tmp_path, text, "generic").values()
    assert row["reason"] == reason


def test_bad_encoding_is_quarantined(spark, tmp_path):
    data = b"1,10,100,pv,1511658000\n2,\xff\xfe10,100,pv,1511658000\n"
    rows = _parse(spark, tmp_path, data, "taobao")
    reasons = sorted((r["user_id"], r["reason"]) for r in rows.values())
    assert reasons[0] == ("1", None) and reasons[1][1] == "bad_encoding"


def test_event_ids_are_deterministic_and_keep_genuine_repeats(spark, tmp_path):
    text = "1,10,100,pv,1511658000\n1,10,100,pv,1511658000\n2,10,100,pv,1511658000\n"
    p = tmp_path / "a.csv"
    p.write_text(text)
    settings = load_settings(home=tmp_path / "home", environ={})
    ids1 = sorted(r["event_id"] for r in ingest.with_event_ids(ingest.parse(spark, [str(p)], "taobao", settings)).collect())
    ids2 = sorted(r["event_id"] for r in ingest.with_event_ids(ingest.parse(spark, [str(p)], "taobao", settings)).collect())
    assert ids1 == ids2
    assert len(set(ids1)) == 3  # the repeated view is a second event, not a duplicate


@pytest.mark.parametrize(
    "content, fmt, message",
    [
        (b"", "taobao", "is empty"),
        (b"\x00\x01\x02PK\x03\x04" * 100, "taobao", "is binary"),
        (b"event_time,event_type\n2019,view\n", "taobao", "does not look like taobao"),
        (b"1,10,100,pv,1511658000\n", "rees46", "does not look like rees46"),
        (b"a,b,c\n1,2,3\n", "generic", "header lacks"),
        (b"not json\n", "generic", "does not look like JSON"),
    ],
)
def test_wrong_or_malformed_files_give_one_clear_error(tmp_path, content, fmt, message):
    name = "x.json" if message.startswith("does not look like JSON") else "x.csv"
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        ingest.sniff(str(p), fmt)


def test_truncated_parquet_is_rejected(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(InputError, match="truncated Parquet"):
        ingest.sniff(str(p), "generic")


def test_resolve_inputs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("x")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".hidden").write_text("")
    assert [p.split("/")[-1] for p in ingest.resolve_inputs(str(tmp_path / "d"))] == ["a.csv"]
    assert len(ingest.resolve_inputs(str(tmp_path / "d" / "*.csv"))) == 1
    with pytest.raises(InputError, match="does not exist"):
        ingest.resolve_inputs(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no input files match"):
        ingest.resolve_inputs(str(tmp_path / "d" / "*.json"))
