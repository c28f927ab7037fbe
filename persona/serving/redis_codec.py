"""Feast's online (Redis) format, encoded column-wise from Arrow: the executor half of
persona's materialization engine (``persona/serving/engine.py`` is the driver half).

Input: Arrow record batches of one feature view (join key, features, event timestamp).
Output: Redis protocol ``HSET`` commands, one per row, byte-for-byte what Feast's
``RedisOnlineStore.online_write_batch`` writes: key = serialized entity key (v3) +
project, hash fields = murmur3 of ``view:feature`` -> ``ValueProto`` bytes, and
``_ts:view`` -> ``Timestamp`` bytes. So every Feast client (SDK, feature server,
``feast ui``) reads what this writes.

How: each column is encoded with numpy/pyarrow (varints, fixed-width floats, packed
vectors), joined element-wise into one command per row, and the batch's commands,
adjacent in one Arrow buffer, go to Redis in pipelined chunks. No Python object per
value. Imports only numpy/pyarrow/redis, so Spark's Python workers start fast.

Grain: one Redis hash per user, one ``HSET`` per (user, feature view).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import RedisCluster

# ---- Feast ValueProto / Timestamp wire encodings, vectorised -------------------------
# Value.proto oneof field numbers (feast/protos/feast/types/Value.proto).
_TAG = {
    "bytes": b"\x0a",         # 1, length-delimited
    "string": b"\x12",        # 2, length-delimited
    "int32": b"\x18",         # 3, varint
    "int64": b"\x20",         # 4, varint
    "double": b"\x29",        # 5, fixed64
    "float": b"\x35",         # 6, fixed32
    "bool": b"\x38",          # 7, varint
    "string_list": b"\x62",   # 12, length-delimited StringList
    "double_list": b"\x7a",   # 15, length-delimited DoubleList
    "float_list": b"\x82\x01",  # 16, length-delimited FloatList
}
_EMPTY = pa.scalar(b"", pa.binary())


def _b(x: bytes) -> pa.Scalar:
    return pa.scalar(x, pa.binary())


def _from_parts(data: np.ndarray, lengths: np.ndarray) -> pa.BinaryArray:
    """A binary array whose i-th value is the next ``lengths[i]`` bytes of ``data``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data, np.uint8))]
    )


def varint(values: np.ndarray) -> pa.BinaryArray:
    """Protobuf base-128 varints of int64 values (negatives as 10-byte two's complement)."""
    u = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    n = len(u)
    nbytes = np.ones(n, dtype=np.int64)
    for k in range(1, 10):
        nbytes += (u >> np.uint64(7 * k)) != 0
    mat = np.empty((n, 10), dtype=np.uint8)
    for k in range(10):
        byte = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        mat[:, k] = byte | ((nbytes > k + 1).astype(np.uint8) << 7)
    mask = np.arange(10)[None, :] < nbytes[:, None]
    return _from_parts(mat[mask], nbytes)


def _fixed(values: np.ndarray, width: int) -> pa.BinaryArray:
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1, width)
    return _from_parts(raw.ravel(), np.full(len(values), width, dtype=np.int64))


def _cat(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, _EMPTY)


def _len_prefixed(tag: bytes, payload: pa.Array) -> pa.Array:
    """``tag + varint(len(payload)) + payload``: a length-delimited protobuf field."""
    lengths = pc.binary_length(payload).to_numpy(zero_copy_only=False)
    return _cat(_b(tag), varint(lengths), payload)


def _valid(arr: pa.Array) -> Optional[np.ndarray]:
    if arr.null_count == 0:
        return None
    return arr.is_valid().to_numpy(zero_copy_only=False)


def _null_to_empty(encoded: pa.Array, valid: Optional[np.ndarray]) -> pa.Array:
    """Feast writes an empty ``ValueProto()`` (zero bytes) for a null value."""
    if valid is None:
        return encoded
    return pc.if_else(pa.array(valid), encoded, _EMPTY)


def _numbers(arr: pa.Array, dtype) -> np.ndarray:
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.int8())
    return arr.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _list_parts(arr: pa.Array):
    """(row offsets relative to the first row, the child values of those rows)."""
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    # Offsets of null lists may span nothing; keep them, they encode to b"" below.
    child = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return offsets - offsets[0], child


def _packed_list(arr: pa.Array, outer_tag: bytes, np_dtype, width: int) -> pa.Array:
    """FloatList / DoubleList: ``outer(len) { 0x0a varint(4n|8n) <packed values> }``."""
    rel, child = _list_parts(arr)
    if child.null_count:
        raise _Unsupported("null element inside a vector")
    values = child.to_numpy(zero_copy_only=False).astype(np_dtype, copy=False)
    counts = np.diff(rel)
    raw = _from_parts(np.ascontiguousarray(values).view(np.uint8), counts * width)
    packed = _cat(_b(b"\x0a"), varint(counts * width), raw)
    payload = pc.if_else(pa.array(counts > 0), packed, _EMPTY)
    return _null_to_empty(_len_prefixed(outer_tag, payload), _valid(arr))


def _string_list(arr: pa.Array) -> pa.Array:
    """StringList: ``0x62 varint(len) { (0x0a varint(len) utf8)* }``."""
    rel, child = _list_parts(arr)
    if child.null_count:
        raise _Unsupported("null element inside a string list")
    items = _len_prefixed(b"\x0a", child.cast(pa.binary()))
    item_offsets = np.frombuffer(items.buffers()[1], dtype=np.int32)[items.offset: items.offset + len(items) + 1]
    data = np.frombuffer(items.buffers()[2], dtype=np.uint8) if len(items) else np.zeros(0, np.uint8)
    starts = item_offsets[rel].astype(np.int64)
    payload = _from_parts(data[starts[0]:starts[-1]] if len(starts) else data, np.diff(starts))
    return _null_to_empty(_len_prefixed(_TAG["string_list"], payload), _valid(arr))


class _Unsupported(Exception):
    """A column this encoder does not handle; the caller falls back to Feast's code."""


def encode_values(arr: pa.Array, value_type: str) -> pa.Array:
    """Serialized ``ValueProto`` bytes of each value of ``arr`` (b"" for nulls).

    ``value_type`` is a ``feast.value_type.ValueType`` name (INT64, DOUBLE, FLOAT_LIST...).
    Raises _Unsupported for types not covered; :func:`encode_column` then uses Feast.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    valid = _valid(arr)
    if value_type == "INT64":
        enc = _cat(_b(_TAG["int64"]), varint(_numbers(arr, np.int64)))
    elif value_type == "INT32":
        # int32 is encoded as a sign-extended 64-bit varint.
        enc = _cat(_b(_TAG["int32"]), varint(_numbers(arr, np.int64)))
    elif value_type == "BOOL":
        enc = _cat(_b(_TAG["bool"]), varint(_numbers(arr, np.int64)))
    elif value_type in ("DOUBLE", "FLOAT"):
        wide = value_type == "DOUBLE"
        values = _numbers(arr, "<f8" if wide else "<f4")
        enc = _cat(_b(_TAG["double" if wide else "float"]), _fixed(values, 8 if wide else 4))
        # Feast turns a NaN scalar into a null (an empty ValueProto), as pandas does.
        nan = np.isnan(values)
        if nan.any():
            valid = ~nan if valid is None else (valid & ~nan)
    elif value_type in ("STRING", "BYTES"):
        tag = _TAG["string"] if value_type == "STRING" else _TAG["bytes"]
        enc = _len_prefixed(tag, arr.fill_null("" if value_type == "STRING" else b"").cast(pa.binary()))
    elif value_type == "FLOAT_LIST":
        return _packed_list(arr, _TAG["float_list"], "<f4", 4)
    elif value_type == "DOUBLE_LIST":
        return _packed_list(arr, _TAG["double_list"], "<f8", 8)
    elif value_type == "STRING_LIST":
        return _string_list(arr)
    else:
        raise _Unsupported(value_type)
    return _null_to_empty(enc, valid)


def encode_timestamps(arr: pa.Array) -> pa.Array:
    """``google.protobuf.Timestamp`` bytes (seconds, nanos; zero fields omitted)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    micros = arr.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    seconds = np.floor_divide(micros, 1_000_000)
    nanos = (micros - seconds * 1_000_000) * 1000
    sec = pc.if_else(pa.array(seconds != 0), _cat(_b(b"\x08"), varint(seconds)), _EMPTY)
    nan = pc.if_else(pa.array(nanos != 0), _cat(_b(b"\x10"), varint(nanos)), _EMPTY)
    return _cat(sec, nan)


def encode_column(arr: pa.Array, value_type: str) -> pa.Array:
    """``encode_values`` with Feast's own per-value conversion as the fallback."""
    try:
        return encode_values(arr, value_type)
    except _Unsupported:
        # deferred: Feast takes seconds to import, and Spark's Python workers import this module
        from feast.type_map import python_values_to_proto_values
        from feast.value_type import ValueType

        protos = python_values_to_proto_values(arr.to_pylist(), ValueType[value_type])
        return pa.array([p.SerializeToString() for p in protos], pa.binary())


def entity_keys(user_ids: pa.Array, join_key: str, project: str) -> pa.Array:
    """Feast's Redis key: ``serialize_entity_key(v3)`` of one string join key + project."""
    jk = join_key.encode()
    prefix = struct.pack("<III", 1, 2, len(jk)) + jk + struct.pack("<I", 2)  # 1 key, STRING
    ids = user_ids.cast(pa.binary())
    lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False).astype("<u4")
    return _cat(_b(prefix), _fixed(lengths, 4), ids, _b(project.encode()))


# ---- Redis protocol --------------------------------------------------------------------
def _bulk(arr: pa.Array) -> pa.Array:
    """RESP bulk strings: ``$<len>\\r\\n<bytes>\\r\\n``."""
    lengths = pc.cast(pc.binary_length(arr), pa.string()).cast(pa.binary())
    return _cat(_b(b"$"), lengths, _b(b"\r\n"), arr, _b(b"\r\n"))


def _bulk_const(x: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(x), x)


@dataclass(frozen=True)
class ViewLayout:
    """What an executor needs to encode one feature view; plain data, cheap to pickle."""

    name: str
    join_key: str
    project: str
    timestamp_field: str
    # (source column, ValueType name, hash field bytes)
    features: tuple
    ts_field: bytes


def hset_commands(batch: pa.RecordBatch | pa.Table, layout: ViewLayout) -> pa.Array:
    """One RESP ``HSET key f1 v1 ... _ts:view ts`` command per row of ``batch``."""
    n_fields = len(layout.features) + 1
    header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * n_fields)
    parts = [_b(header), _bulk(entity_keys(batch.column(layout.join_key), layout.join_key, layout.project))]
    for column, value_type, field in layout.features:
        parts.append(_b(_bulk_const(field)))
        parts.append(_bulk(encode_column(batch.column(column), value_type)))
    parts.append(_b(_bulk_const(layout.ts_field)))
    parts.append(_bulk(encode_timestamps(batch.column(layout.timestamp_field))))
    return _cat(*parts)


def hset_mappings(batch: pa.RecordBatch | pa.Table, layout: ViewLayout) -> list[tuple[bytes, dict]]:
    """The same data as ``(key, {field: bytes})`` pairs, for redis-py (cluster) clients."""
    keys = entity_keys(batch.column(layout.join_key), layout.join_key, layout.project).to_pylist()
    cols = [(f, encode_column(batch.column(c), t).to_pylist()) for c, t, f in layout.features]
    ts = encode_timestamps(batch.column(layout.timestamp_field)).to_pylist()
    out = []
    for i, key in enumerate(keys):
        mapping = {f: vals[i] for f, vals in cols}
        mapping[layout.ts_field] = ts[i]
        out.append((key, mapping))
    return out


def _contiguous(commands: pa.Array, start: int, stop: int) -> memoryview:
    """The bytes of ``commands[start:stop]``, zero-copy (they are adjacent in the buffer)."""
    offsets = np.frombuffer(commands.buffers()[1], dtype=np.int32)
    base = commands.offset
    lo, hi = int(offsets[base + start]), int(offsets[base + stop])
    return memoryview(commands.buffers()[2])[lo:hi]


# ---- executor side -----------------------------------------------------------------------
@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    kwargs: tuple  # sorted (key, value) pairs for redis.Redis(...)
    cluster: bool = False


def redis_target(connection_string: str, cluster: bool = False,
                 connect_timeout: float | None = None) -> RedisTarget:
    """Parse Feast's ``host:port,key=value,...`` connection string the way Feast does."""
    # deferred: Feast takes seconds to import, and Spark's Python workers import this module
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    if not nodes:
        raise ValueError(f"no host:port in Redis connection string {connection_string!r}")
    if connect_timeout is not None:
        params.setdefault("socket_connect_timeout", connect_timeout)
    return RedisTarget(host=nodes[0]["host"], port=int(nodes[0].get("port", 6379)),
                       kwargs=tuple(sorted(params.items())), cluster=cluster)


def client_for(target: RedisTarget) -> "redis.Redis | RedisCluster":
    """A client for ``target``: a cluster client when the target is a Redis Cluster."""
    kwargs = dict(target.kwargs)
    if target.cluster:
        return RedisCluster(host=target.host, port=target.port, **kwargs)
    return redis.Redis(host=target.host, port=target.port, **kwargs)


def write_batches(batches: Iterator[pa.RecordBatch], layout: ViewLayout, target: RedisTarget,
                  pipeline_rows: int) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: encode and pipeline every row; yield one count per batch.

    One connection per task; ``pipeline_rows`` commands are in flight at a time (the
    next chunk is sent before the previous chunk's replies are read, so encoding,
    the network and Redis overlap).
    """
    client = client_for(target)
    try:
        if target.cluster:
            for batch in batches:
                with client.pipeline(transaction=False) as pipe:
                    for key, mapping in hset_mappings(batch, layout):
                        pipe.hset(key, mapping=mapping)
                    pipe.execute()
                yield pa.record_batch([pa.array([batch.num_rows], pa.int64())], names=["rows"])
            return
        conn = client.connection_pool.get_connection()
        try:
            pending = 0
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                commands = hset_commands(batch, layout)
                for start in range(0, batch.num_rows, pipeline_rows):
                    stop = min(start + pipeline_rows, batch.num_rows)
                    conn.send_packed_command([_contiguous(commands, start, stop)], check_health=False)
                    # Read the replies of the previous chunk while this one is on the wire.
                    for _ in range(pending):
                        conn.read_response()
                    pending = stop - start
                yield pa.record_batch([pa.array([batch.num_rows], pa.int64())], names=["rows"])
            for _ in range(pending):
                conn.read_response()
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()
