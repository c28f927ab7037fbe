"""persona.serving.redis_codec writes exactly the bytes Feast's Redis store writes.

Reference: Feast's own ``_convert_arrow_to_proto`` + ``ValueProto.SerializeToString`` and
``_redis_key`` / ``_mmh3`` (what ``RedisOnlineStore.online_write_batch`` stores), on a
frame with every type persona serves, nulls, empty lists, NaN, negatives, long strings.
"""

from __future__ import annotations

import datetime as dt

import hiredis
import numpy as np
import pyarrow as pa
import pytest

feast = pytest.importorskip("feast")

from feast import Entity, FeatureView, Field  # noqa: E402
from feast.infra.offline_stores.file_source import FileSource  # noqa: E402
from feast.infra.online_stores.helpers import _mmh3, _redis_key  # noqa: E402
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String  # noqa: E402
from feast.utils import _convert_arrow_to_proto, make_tzaware  # noqa: E402
from feast.value_type import ValueType  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

from persona.serving import redis_codec as fc  # noqa: E402

UTC = dt.timezone.utc
FEATURES = [("i64", Int64), ("i32", Int32), ("f64", Float64), ("f32", Float32), ("b", Bool), ("s", String),
            ("fl", Array(Float32)), ("dl", Array(Float64)), ("sl", Array(String))]


def _table() -> pa.Table:
    ts = [dt.datetime(2024, 1, 1, 23, 59, 59, 999999, tzinfo=UTC), dt.datetime(1970, 1, 1, tzinfo=UTC),
          dt.datetime(1969, 12, 31, 23, 0, 0, 500, tzinfo=UTC)] + [dt.datetime(2026, 5, d, tzinfo=UTC) for d in range(1, 5)]
    return pa.table({
        "user_id": pa.array(["u1", "", "ü-ß", "x" * 300, "a", "b", "c"]),
        "i64": pa.array([0, 1, -1, 2**62, None, 127, 128], pa.int64()),
        "i32": pa.array([0, -5, 2**31 - 1, None, 300, -2**31, 1], pa.int32()),
        "f64": pa.array([0.0, -0.0, 1.5, None, float("nan"), 1e300, -3.25]),
        "f32": pa.array([0.5, None, float("nan"), -1.0, 3.0, 0.0, 1e-3], pa.float32()),
        "b": pa.array([True, False, None, True, False, True, False]),
        "s": pa.array(["", "abc", None, "ü" * 200, "x", "y", "z"]),
        "fl": pa.array([[1.0, 2.0], [], None, [0.0] * 40, [-1.5], [3.0], [4.0, 5.0]], pa.list_(pa.float32())),
        "dl": pa.array([[1.0], [], None, [2.0] * 40, [-1.5], [3.0], [4.0, 5.0]], pa.list_(pa.float64())),
        "sl": pa.array([["a", "bb"], [], None, ["x" * 200], [""], ["c"], ["d", "e", "f"]], pa.list_(pa.string())),
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
    })


def _feast_reference(table: pa.Table) -> list[tuple[bytes, dict]]:
    """What RedisOnlineStore.online_write_batch(skip_dedup) writes, per row."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    fv = FeatureView(
        name="v", entities=[user],
        schema=[Field(name=c, dtype=d) for c, d in FEATURES] + [Field(name="user_id", dtype=String)],
        source=FileSource(path="/nonexistent.parquet", timestamp_field="event_timestamp"),
    )
    out = []
    for entity_key, values, ts, _ in _convert_arrow_to_proto(table, fv, {"user_id": ValueType.STRING}):
        stamp = Timestamp()
        stamp.FromDatetime(make_tzaware(ts))
        mapping = {_mmh3(f"v:{name}"): v.SerializeToString() for name, v in values.items()}
        mapping[b"_ts:v"] = stamp.SerializeToString()
        out.append((_redis_key("persona", entity_key, 3), mapping))
    return out


def _layout() -> fc.ViewLayout:
    return fc.ViewLayout(
        name="v", join_key="user_id", project="persona", timestamp_field="event_timestamp",
        features=tuple((c, d.to_value_type().name, _mmh3(f"v:{c}")) for c, d in FEATURES),
        ts_field=b"_ts:v",
    )


def test_hset_commands_are_feasts_bytes():
    table = _table()
    want = _feast_reference(table)
    commands = fc.hset_commands(table.to_batches()[0], _layout())
    reader = hiredis.Reader()
    reader.feed(bytes(fc._contiguous(commands, 0, table.num_rows)))
    for i, (key, mapping) in enumerate(want):
        got = reader.gets()
        assert got[0] == b"HSET"
        assert got[1] == key, f"row {i}: key"
        assert dict(zip(got[2::2], got[3::2])) == mapping, f"row {i}: fields"
    assert reader.gets() is False  # nothing left over


def test_slices_and_chunks_stay_aligned():
    """A sliced batch (non-zero offsets) and sub-ranges of the command buffer."""
    table = _table()
    want = _feast_reference(table)[2:6]
    batch = table.to_batches()[0].slice(2, 4)
    commands = fc.hset_commands(batch, _layout())
    reader = hiredis.Reader()
    reader.feed(bytes(fc._contiguous(commands, 0, 1)) + bytes(fc._contiguous(commands, 1, 4)))
    for key, mapping in want:
        got = reader.gets()
        assert got[1] == key and dict(zip(got[2::2], got[3::2])) == mapping


def test_mappings_match_commands():
    table = _table()
    want = _feast_reference(table)
    assert fc.hset_mappings(table.to_batches()[0], _layout()) == want


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2**31, 2**63 - 1, -1, -(2**63)])
def test_varint(n):
    from google.protobuf.internal.encoder import _VarintBytes

    expected = _VarintBytes(n if n >= 0 else n + (1 << 64))
    assert fc.varint(np.array([n], dtype=np.int64))[0].as_py() == expected


def test_unsupported_type_falls_back_to_feast():
    arr = pa.array([[1, 2], None, []], pa.list_(pa.int64()))
    from feast.type_map import python_values_to_proto_values

    want = [p.SerializeToString() for p in python_values_to_proto_values(arr.to_pylist(), ValueType.INT64_LIST)]
    assert fc.encode_column(arr, "INT64_LIST").to_pylist() == want
