"""Protobuf wire format by hand, for the Redis online store's read path.

Input: serialized Feast ``ValueProto``s and ``Timestamp``s as Redis holds them (one
bytes value per feature per user; b"" or None for a missing value). Output: protobuf
wire fragments (varints, length-delimited and repeated fields) that
``persona.serving.redis_store`` concatenates into a ``GetOnlineFeaturesResponse``
without building a Python object per value, and whole columns of Python values decoded
by one C protobuf parse (what Feast's ``to_dict`` returns, value for value).

Grain: one call per response field or per feature column, never per value.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple

from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_VARINTS = [_encode_varint(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """The base-128 varint of one non-negative int (looked up below 16384)."""
    return _VARINTS[n] if n < 16384 else _encode_varint(n)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag varint(len) payload``."""
    return tag + varint(len(payload)) + payload


PRESENT = b"\x01"  # FieldStatus.PRESENT
# tag + length prefixes of short length-delimited fields, per tag.
_PREFIXES: Dict[bytes, List[bytes]] = {}


def repeated(tag: bytes, values: Sequence[Optional[bytes]]) -> bytes:
    """``tag len value`` for each value (None counts as b""): a repeated message field.
    Joined through ``map`` (C loops): this runs once per feature per request."""
    prefixes = _PREFIXES.get(tag)
    if prefixes is None:
        prefixes = _PREFIXES[tag] = [tag + v for v in _VARINTS]
    if None in values:
        values = [v or b"" for v in values]
    try:
        return b"".join(map(bytes.__add__, map(prefixes.__getitem__, map(len, values)), values))
    except IndexError:  # a value of 16 KiB or more
        return b"".join([field(tag, v) for v in values])


class TsCanon:
    """Feast re-derives each row timestamp through a float ``datetime``; mirror that
    exactly (cached: a whole day's snapshot shares one timestamp)."""

    def __init__(self) -> None:
        self.cache: Dict[bytes, bytes] = {}

    def __call__(self, raw: Optional[bytes]) -> bytes:
        if not raw:
            return b""
        hit = self.cache.get(raw)
        if hit is not None:
            return hit
        ts = Timestamp()
        ts.ParseFromString(raw)
        when = datetime.fromtimestamp(ts.seconds + ts.nanos / 1_000_000_000.0, tz=timezone.utc)
        out = Timestamp()
        out.FromDatetime(when)
        canon = out.SerializeToString()
        if len(self.cache) > 100_000:
            self.cache.clear()
        self.cache[raw] = canon
        return canon


SCALARS = frozenset(("double_val", "float_val", "int32_val", "int64_val", "bool_val", "string_val", "bytes_val"))
LISTS = frozenset(("double_list_val", "float_list_val", "int32_list_val", "int64_list_val",
                   "bool_list_val", "string_list_val", "bytes_list_val"))


def python_value(v, ftype):
    """Feast's Python value of one ``ValueProto`` the typed fast path does not cover:
    null, or a value of another kind than its column's."""
    if v.WhichOneof("val") is None:
        return None
    return feast_value_type_to_python_type(v, ftype)


# ValueType name -> the Value oneof member Feast writes for it.
KIND = {
    "DOUBLE": "double_val", "FLOAT": "float_val", "INT32": "int32_val", "INT64": "int64_val",
    "BOOL": "bool_val", "STRING": "string_val", "BYTES": "bytes_val",
    "DOUBLE_LIST": "double_list_val", "FLOAT_LIST": "float_list_val", "INT32_LIST": "int32_list_val",
    "INT64_LIST": "int64_list_val", "BOOL_LIST": "bool_list_val", "STRING_LIST": "string_list_val",
    "BYTES_LIST": "bytes_list_val",
}


def _column_message():
    """A message whose field k is ``repeated <type of Value's oneof member k>``.

    Serialized ``ValueProto``s concatenated are then a valid encoding of it: each value's
    single oneof field lands in the repeated field of the same number, so one C parse
    decodes a whole column, and a value of another kind shows up as a short count.
    """
    T = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="persona/feast_column.proto", package="persona", syntax="proto3")
    lists = {"BytesL": T.TYPE_BYTES, "StringL": T.TYPE_STRING, "Int32L": T.TYPE_INT32, "Int64L": T.TYPE_INT64,
             "DoubleL": T.TYPE_DOUBLE, "FloatL": T.TYPE_FLOAT, "BoolL": T.TYPE_BOOL}
    for name, typ in lists.items():
        fdp.message_type.add(name=name).field.add(name="val", number=1, type=typ, label=T.LABEL_REPEATED)
    column = fdp.message_type.add(name="Column")
    for name, number, typ in (("bytes_val", 1, T.TYPE_BYTES), ("string_val", 2, T.TYPE_STRING),
                              ("int32_val", 3, T.TYPE_INT32), ("int64_val", 4, T.TYPE_INT64),
                              ("double_val", 5, T.TYPE_DOUBLE), ("float_val", 6, T.TYPE_FLOAT),
                              ("bool_val", 7, T.TYPE_BOOL)):
        column.field.add(name=name, number=number, type=typ, label=T.LABEL_REPEATED)
    for name, number, msg in (("bytes_list_val", 11, "BytesL"), ("string_list_val", 12, "StringL"),
                              ("int32_list_val", 13, "Int32L"), ("int64_list_val", 14, "Int64L"),
                              ("double_list_val", 15, "DoubleL"), ("float_list_val", 16, "FloatL"),
                              ("bool_list_val", 17, "BoolL")):
        column.field.add(name=name, number=number, type=T.TYPE_MESSAGE, type_name=f".persona.{msg}",
                         label=T.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("persona.Column"))


_Column = _column_message()


def decode_columns(named: Dict[str, Tuple[Sequence[Optional[bytes]], Any]]) -> Dict[str, List[Any]]:
    """Every column of a response decoded from Redis' bytes: the null-free columns of
    one value kind are concatenated and parsed together (one C parse per kind, not per
    feature: most of the time of a one-user lookup otherwise); the rest column by column."""
    out: Dict[str, List[Any]] = {}
    groups: Dict[str, List[Tuple[str, Sequence[bytes]]]] = {}
    for ref, (column, value_type) in named.items():
        kind = KIND.get(value_type.name)
        if kind is None or not column or None in column or b"" in column:
            out[ref] = decode_column(column, value_type)
        else:
            groups.setdefault(kind, []).append((ref, column))
    for kind, columns in groups.items():
        n = len(columns[0][1])
        try:
            got = getattr(_Column.FromString(b"".join([b"".join(c) for _, c in columns])), kind)
        except DecodeError:
            got = ()
        if len(got) != n * len(columns):  # a value of another kind somewhere: one by one
            for ref, column in columns:
                out[ref] = decode_column(column, named[ref][1])
            continue
        values = list(got) if kind in SCALARS else [list(x.val) for x in got]
        for k, (ref, _) in enumerate(columns):
            out[ref] = values[k * n:(k + 1) * n]
    return out


def decode_column(raw: Sequence[Optional[bytes]], value_type) -> List[Any]:
    """Python values of serialized ``ValueProto``s (b"" or None: null), as Feast's
    ``to_dict`` returns them: one bytes join and one C protobuf parse per column (see
    ``_column_message``); one ``Value`` parse per value when anything is unexpected.
    """
    kind = KIND.get(value_type.name)
    if kind is not None:
        if None in raw:
            present = [v for v in raw if v]
            n = len(present)
        else:
            present = raw
            n = len(raw) - raw.count(b"")
        try:
            got = getattr(_Column.FromString(b"".join(present)), kind)
        except DecodeError:
            got = ()
        if n and len(got) == n:
            values = list(got) if kind in SCALARS else [list(x.val) for x in got]
            if n == len(raw):
                return values
            it = iter(values)
            return [next(it) if v else None for v in raw]
    out: List[Any] = []
    for v in raw:
        if not v:
            out.append(None)
            continue
        value = ValueProto.FromString(v)
        if kind is not None and value.HasField(kind):
            got = getattr(value, kind)
            out.append(list(got.val) if kind in LISTS else got)
        else:
            out.append(python_value(value, value_type))
    return out
