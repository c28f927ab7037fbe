"""A Feast online store for Redis that reads Feast's own Redis layout with less Python.

Input: ``get_online_features`` calls (SDK or Feast's HTTP feature server). Output: the
same ``GetOnlineFeaturesResponse`` Feast's ``RedisOnlineStore`` returns, byte for byte
(the tests compare them), one row per requested entity.

Configured as ``online_store: {type: persona.serving.redis_store.PersonaRedisOnlineStore,
connection_string: ...}``; it *is* a ``RedisOnlineStore`` (writes, deletes, async
writes, precompute are inherited), and the data stays in Feast's format, so a plain
``type: redis`` client reads the same keys.

What changes on the read path (measured: most of Feast's time for 100 users went to
Python objects, not Redis):
- one ``HMGET`` per user for all feature views (they share the user's hash) instead of
  one per user per view, packed as one Redis protocol buffer;
- the response is assembled as protobuf wire bytes (Redis already holds serialized
  ``ValueProto``s) and parsed once by the C protobuf runtime, instead of one Python
  ``ValueProto`` per value;
- ``to_dict()`` converts values with a flat type dispatch.
Anything unusual (feature view versioning, GLIDE client, non-string or composite join
keys) goes through Feast's own code. The protobuf wire helpers and the column decoding
live in ``persona.serving.wire``.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import hiredis
from feast import utils
from feast.feature_service import FeatureService
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisClient, RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.online_response import TIMESTAMP_POSTFIX, OnlineResponse

from persona.serving.wire import (
    KIND,
    PRESENT,
    SCALARS,
    TsCanon,
    decode_columns,
    field,
    python_value,
    repeated,
    varint,
)

STORE_TYPE = "persona.serving.redis_store.PersonaRedisOnlineStore"


class PersonaRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Same options as Feast's ``redis`` online store."""

    type: Literal["persona.serving.redis_store.PersonaRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class PersonaOnlineResponse(OnlineResponse):
    """``OnlineResponse`` that decodes ``to_dict`` from Redis' bytes and builds its
    ``proto`` only when something reads it (the SDK's usual ``to_dict()`` never does)."""

    # Set by PersonaRedisOnlineStore: ({column name: (reply column, ValueType)},); None
    # when the response came through Feast's own path.
    _raw: Optional[Tuple[Dict[str, Tuple[Sequence[Optional[bytes]], Any]]]] = None

    @property  # type: ignore[override]
    def proto(self):
        d = self.__dict__
        pending = d.pop("_pending", None)
        if pending is not None:  # append the features' columns after the join keys
            store, plan, columns, full_feature_names = pending
            d["proto"].MergeFromString(store._response_bytes(plan, columns, full_feature_names))
        return d["proto"]

    @proto.setter
    def proto(self, value) -> None:
        self.__dict__["proto"] = value

    def to_dict(self, include_event_timestamps: bool = False) -> Dict[str, Any]:
        raw = None if include_event_timestamps else self._raw
        # Without timestamps, and with the features not merged into the proto yet, the
        # proto holds just the join keys; the features follow in the order they would.
        proto = self.__dict__["proto"] if raw is not None else self.proto
        decoded = decode_columns(raw[0]) if raw is not None else {}
        response: Dict[str, List[Any]] = {}
        for feature_ref, vector in zip(proto.metadata.feature_names.val, proto.results):
            if feature_ref in decoded:
                response[feature_ref] = decoded[feature_ref]
                continue
            ftype = self._feature_types.get(feature_ref)
            values = vector.values
            kind = KIND.get(ftype.name) if ftype is not None else None
            if kind is not None and kind in SCALARS:
                # Every non-null value of a typed column has this kind (Feast wrote it so).
                column = [getattr(v, kind) if v.HasField(kind) else python_value(v, ftype) for v in values]
            elif kind is not None:
                column = [list(getattr(v, kind).val) if v.HasField(kind) else python_value(v, ftype) for v in values]
            else:
                column = [python_value(v, ftype) for v in values]
            response[feature_ref] = column
            if include_event_timestamps:
                response[feature_ref + TIMESTAMP_POSTFIX] = [ts.seconds for ts in vector.event_timestamps]
        for feature_ref, column in decoded.items():
            if feature_ref not in response:  # not merged into the proto (yet)
                response[feature_ref] = column
        return response


class _Plan:
    """How to read one request: the Redis keys, the HMGET field list, and where each
    feature view's fields sit in the reply."""

    __slots__ = ("keys", "fields_blob", "n_fields", "tables", "idxs", "output_len", "identity")


class PersonaRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store with a leaner read path (same data, same responses)."""

    def __init__(self) -> None:
        super().__init__()
        self._fields_cache: Dict[Tuple, Tuple[bytes, int, list]] = {}
        self._ts = TsCanon()
        self._types: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
        self._feature_types_cache: Dict[Tuple, Tuple[list, Dict[str, Any]]] = {}
        # The raw replies of this thread's last read, handed from _read_features_per_fv
        # to get_online_features (Feast's flow in between only sees the proto).
        self._local = threading.local()

    # -- public entry points: same contract, faster to_dict --------------------------------
    def get_online_features(self, config, features, *args, **kwargs) -> OnlineResponse:
        local = self._local
        local.raw = None
        local.views = _plain_views(features)
        try:
            response = super().get_online_features(config, features, *args, **kwargs)
            raw = local.raw
        finally:
            local.raw = local.views = None
        response.__class__ = PersonaOnlineResponse
        if raw is not None and raw[0] is response.__dict__["proto"]:
            response._raw = (raw[1],)
            if raw[2] is not None:
                response.__dict__["_pending"] = raw[2]
        return response

    async def get_online_features_async(self, *args, **kwargs) -> OnlineResponse:
        response = await super().get_online_features_async(*args, **kwargs)
        response.__class__ = PersonaOnlineResponse
        return response

    def _build_feature_types(self, grouped_refs: List) -> Dict[str, Any]:
        """Feast's name -> ValueType map, cached per (views, requested features): it
        walks every field of every view on each request otherwise."""
        key = tuple((id(t), tuple(r)) for t, r in grouped_refs)
        hit = self._feature_types_cache.get(key)
        if hit is not None and all(a is t for a, (t, _) in zip(hit[0], grouped_refs)):
            return hit[1]
        types = RedisOnlineStore._build_feature_types(grouped_refs)
        if len(self._feature_types_cache) > 1000:
            self._feature_types_cache.clear()
        self._feature_types_cache[key] = ([t for t, _ in grouped_refs], types)
        return types

    # -- planning ----------------------------------------------------------------------------
    def _plan(self, config, grouped_refs, join_key_values, entity_name_to_join_key_map) -> Optional[_Plan]:
        if config.registry.enable_online_feature_view_versioning:
            return None
        if config.online_store.client == RedisClient.glide or not grouped_refs:
            return None
        tables = []
        shared = None  # (join key names) -> (keys, idxs, output_len), computed once
        for table, requested in grouped_refs:
            signature = (tuple(c.name for c in table.entity_columns),
                         tuple(sorted((table.projection.join_key_map or {}).items())))
            if shared is None:
                entity_values, idxs, output_len = utils._get_unique_entities(
                    table, join_key_values, entity_name_to_join_key_map)
                keys = self._keys(config, entity_values)
                if keys is None:
                    return None
                shared = (signature, keys)
            elif signature != shared[0]:
                return None  # views keyed differently: Feast's per-view path
            tables.append((table, list(requested)))
        first_keys = shared[1]
        sig = tuple((t.name, tuple(r)) for t, r in tables)
        cached = self._fields_cache.get(sig)
        if cached is None:
            fields: List[bytes] = []
            layout = []
            for table, requested in tables:
                start = len(fields)
                fields.extend(_mmh3(f"{table.name}:{f}") for f in requested)
                fields.append(f"_ts:{table.name}".encode())
                layout.append((start, len(requested)))
            blob = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
            cached = (blob, len(fields), layout)
            self._fields_cache[sig] = cached
        plan = _Plan()
        plan.keys = first_keys
        plan.fields_blob, plan.n_fields, layout = cached
        plan.tables = [(t, r, start) for (t, r), (start, _) in zip(tables, layout)]
        plan.idxs = idxs
        plan.output_len = output_len
        plan.identity = all(len(d) == 1 and d[0] == u for u, d in enumerate(idxs))
        return plan

    @staticmethod
    def _keys(config, entity_values: Sequence[Dict[str, Any]]) -> Optional[List[bytes]]:
        """Feast's Redis keys for single string join keys (serialize_entity_key v3 + project)."""
        if config.entity_key_serialization_version != 3:
            return None
        project = config.project.encode()
        keys = []
        prefix_cache: Dict[str, bytes] = {}
        for row in entity_values:
            if len(row) != 1:
                return None
            (name, value), = row.items()
            if value.WhichOneof("val") != "string_val":
                return None
            prefix = prefix_cache.get(name)
            if prefix is None:
                jk = name.encode()
                prefix = struct.pack("<III", 1, 2, len(jk)) + jk + struct.pack("<I", 2)
                prefix_cache[name] = prefix
            v = value.string_val.encode()
            keys.append(prefix + struct.pack("<I", len(v)) + v + project)
        return keys

    def _commands(self, plan: _Plan) -> bytes:
        head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + plan.n_fields)
        blob = plan.fields_blob
        return b"".join(b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, blob) for k in plan.keys)

    # -- response assembly -------------------------------------------------------------------
    @staticmethod
    def _columns(plan: _Plan, replies: List[List[Optional[bytes]]]) -> List[Sequence[Optional[bytes]]]:
        """The replies transposed: one tuple per HMGET field, one entry per *output* row
        (rows permuted/duplicated once here, not per column)."""
        if not (plan.identity and plan.output_len == len(replies)):
            where = [0] * plan.output_len  # output row -> unique entity
            for u, dests in enumerate(plan.idxs):
                for d in dests:
                    where[d] = u
            replies = [replies[u] for u in where]
        return list(zip(*replies)) if replies else [()] * plan.n_fields

    def _response_bytes(self, plan: _Plan, columns: List[Sequence[Optional[bytes]]], full_feature_names: bool) -> bytes:
        out_len = plan.output_len
        names: List[bytes] = []
        results: List[bytes] = []
        statuses = (b"\x12" + varint(out_len) + PRESENT * out_len) if out_len else b""
        ts_canon = self._ts
        for table, requested, start in plan.tables:
            ts_part = repeated(b"\x1a", [ts_canon(v) for v in columns[start + len(requested)]])
            table_name = table.projection.name_to_use()
            for j, feature in enumerate(requested):
                ref = f"{table_name}__{feature}" if full_feature_names else feature
                names.append(field(b"\x0a", ref.encode()))
                # FeatureVector: values (1: the raw ValueProto bytes, b"" = null), statuses
                # (2, packed), event_timestamps (3).
                results.append(field(b"\x12", repeated(b"\x0a", columns[start + j]) + statuses + ts_part))
        metadata = field(b"\x0a", field(b"\x0a", b"".join(names)))
        return metadata + b"".join(results)

    # -- sync read -----------------------------------------------------------------------------
    def _read_features_per_fv(self, config, grouped_refs, join_key_values, entity_name_to_join_key_map,
                              online_features_response, full_feature_names: bool,
                              include_feature_view_version_metadata: bool) -> None:
        plan = None if include_feature_view_version_metadata else self._plan(
            config, grouped_refs, join_key_values, entity_name_to_join_key_map)
        if plan is None:
            return super()._read_features_per_fv(
                config, grouped_refs, join_key_values, entity_name_to_join_key_map,
                online_features_response, full_feature_names, include_feature_view_version_metadata)
        replies = self._hmget_all(config, plan) if plan.keys else []
        columns = self._columns(plan, replies)
        named = self._raw_columns(plan, columns, full_feature_names)
        views = getattr(self._local, "views", None)
        if views is not None and views == {t.projection.name_to_use() for t, _ in grouped_refs}:
            # Only plain feature views requested (no on-demand view reads the proto in
            # between): the proto is completed when, and if, someone reads it.
            self._local.raw = (online_features_response, named, (self, plan, columns, full_feature_names))
            return
        online_features_response.MergeFromString(self._response_bytes(plan, columns, full_feature_names))
        self._local.raw = (online_features_response, named, None)

    def _raw_columns(self, plan: _Plan, columns: List[Sequence[Optional[bytes]]], full_feature_names: bool):
        """feature name -> (its HMGET column in output-row order, ValueType)."""
        named: Dict[str, Tuple[Sequence[Optional[bytes]], Any]] = {}
        for table, requested, start in plan.tables:
            # Keyed by the view object (Feast re-creates it when the registry changes);
            # the entry holds the view, so its id cannot be reused while cached.
            cached = self._types.get(id(table))
            if cached is None or cached[0] is not table:
                if len(self._types) > 1000:
                    self._types.clear()
                cached = (table, {f.name: f.dtype.to_value_type() for f in table.features})
                self._types[id(table)] = cached
            types = cached[1]
            table_name = table.projection.name_to_use()
            for j, feature in enumerate(requested):
                ref = f"{table_name}__{feature}" if full_feature_names else feature
                named[ref] = (columns[start + j], types[feature])
        return named

    def _hmget_all(self, config, plan: _Plan) -> List[List[Optional[bytes]]]:
        client = self._get_client(config.online_store)
        if config.online_store.redis_type == RedisType.redis_cluster:
            fields = _fields_of(plan)
            with client.pipeline(transaction=False) as pipe:
                for key in plan.keys:
                    pipe.hmget(key, fields)
                return pipe.execute()
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([self._commands(plan)], check_health=False)
            return [conn.read_response() for _ in plan.keys]
        except BaseException:
            # A half-read pipeline leaves the socket out of sync: drop it.
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    # -- async read (Feast's HTTP feature server) ---------------------------------------------
    async def _read_features_per_fv_async(self, config, grouped_refs, join_key_values,
                                          entity_name_to_join_key_map, online_features_response,
                                          full_feature_names: bool,
                                          include_feature_view_version_metadata: bool) -> None:
        plan = None if include_feature_view_version_metadata else self._plan(
            config, grouped_refs, join_key_values, entity_name_to_join_key_map)
        if plan is None or config.online_store.redis_type == RedisType.redis_cluster:
            return await super()._read_features_per_fv_async(
                config, grouped_refs, join_key_values, entity_name_to_join_key_map,
                online_features_response, full_feature_names, include_feature_view_version_metadata)
        replies: List = []
        if plan.keys:
            client = await self._get_client_async(config.online_store)
            pool = client.connection_pool
            conn = await pool.get_connection()
            try:
                await conn.send_packed_command([self._commands(plan)], check_health=False)
                replies = [await conn.read_response() for _ in plan.keys]
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
        online_features_response.MergeFromString(
            self._response_bytes(plan, self._columns(plan, replies), full_feature_names))


def _plain_views(features) -> Optional[set]:
    """Names of the views a request reads (a feature service's projections, or the
    ``view:feature`` prefixes), or None when that cannot be told."""
    if isinstance(features, FeatureService):
        return {p.name_to_use() for p in features.feature_view_projections}
    if isinstance(features, (list, tuple)) and all(isinstance(f, str) and ":" in f for f in features):
        return {f.split(":", 1)[0] for f in features}
    return None


def _fields_of(plan: _Plan) -> List[bytes]:
    """The HMGET field names of a plan (decoded back from the packed blob)."""
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % plan.n_fields + plan.fields_blob)
    return reader.gets()
