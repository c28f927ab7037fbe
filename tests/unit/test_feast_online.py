"""persona.serving.wire's column decoding: serialized ValueProtos (what Redis holds) ->
the Python values Feast's OnlineResponse.to_dict returns, for every type the feature
views use, with nulls, missing users (None) and values of an unexpected kind."""

from __future__ import annotations

import math

import pytest

from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

from persona.serving.wire import decode_column, decode_columns, repeated

CASES = {
    ValueType.INT64: [0, 1, -1, 2**62, 127, 128, None, 300],
    ValueType.INT32: [0, -5, 2**31 - 1, None, 7],
    ValueType.DOUBLE: [0.0, -1.5, 1e300, None, 3.25],
    ValueType.FLOAT: [0.5, -2.0, None, 1.25],
    ValueType.STRING: ["", "a", "é中", None, "x" * 300],
    ValueType.BOOL: [True, False, None],
    ValueType.FLOAT_LIST: [[0.5, 1.5], [], None, [float(i) for i in range(40)]],
    ValueType.DOUBLE_LIST: [[0.25], None, [1.0, 2.0]],
    ValueType.STRING_LIST: [["a", "b"], [], None, ["c"]],
    ValueType.INT64_LIST: [[1, -2, 3], None],
}


def serialized(values, vtype):
    return [p.SerializeToString() for p in python_values_to_proto_values(values, vtype)]


def feast_says(raw, vtype):
    from feast.protos.feast.types.Value_pb2 import Value

    return [feast_value_type_to_python_type(Value.FromString(v or b""), vtype) for v in raw]


def same(a, b) -> bool:
    return repr(a) == repr(b)


@pytest.mark.parametrize("vtype", list(CASES), ids=lambda t: t.name)
def test_column_decodes_like_feast(vtype):
    raw = serialized(CASES[vtype], vtype)
    assert same(decode_column(raw, vtype), feast_says(raw, vtype))
    # A missing user: HMGET gives None for every field.
    with_missing = [None] + raw + [None]
    assert same(decode_column(with_missing, vtype), [None] + feast_says(raw, vtype) + [None])
    # Null-free columns of one kind are decoded together.
    clean = [v for v in raw if v]
    named = {"a": (clean, vtype), "b": (list(reversed(clean)), vtype), "c": (raw, vtype)}
    got = decode_columns(named)
    assert same(got["a"], feast_says(clean, vtype))
    assert same(got["b"], feast_says(list(reversed(clean)), vtype))
    assert same(got["c"], feast_says(raw, vtype))


def test_value_of_another_kind_falls_back_to_feast():
    # An INT32 value where the view says INT64 (a view retyped after materializing).
    raw = serialized([1, 2], ValueType.INT64) + serialized([3], ValueType.INT32) + serialized([2.5], ValueType.DOUBLE)
    want = feast_says(raw, ValueType.INT64)
    assert same(decode_column(raw, ValueType.INT64), want)
    assert same(decode_columns({"x": (raw, ValueType.INT64)})["x"], want)


def test_nan_survives():
    from feast.protos.feast.types.Value_pb2 import Value

    raw = [Value(double_val=math.nan).SerializeToString(), Value(double_val=1.0).SerializeToString()]
    for got in (decode_column(raw, ValueType.DOUBLE), decode_columns({"x": (raw, ValueType.DOUBLE)})["x"]):
        assert math.isnan(got[0]) and got[1] == 1.0


def test_repeated_field_framing():
    from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse

    values = serialized([1, None, 3], ValueType.INT64) + [None, b"x" * 20000]
    framed = repeated(b"\x0a", values)
    vector = GetOnlineFeaturesResponse.FeatureVector.FromString(framed)
    assert [v.SerializeToString() for v in vector.values] == [v or b"" for v in values]
