"""``persona serve``: a lean HTTP feature server speaking Feast's ``/get-online-features`` JSON.

Input: ``POST /get-online-features`` with Feast's request body
(``{"feature_service": "recommender_v1" | "features": [...], "entities": {"user_id": [...]},
"full_feature_names": false}``). Output: Feast's response body, built by Feast's own
``convert_response_to_dict`` from the SDK's ``GetOnlineFeaturesResponse`` (so a client of
``feast serve`` reads it unchanged), one result column per feature, one value per entity.
Also ``GET /health``.

Why not Feast's server: FastAPI + uvicorn + pydantic validation + two thread-pool hops
(registry lookup, response conversion) cost several milliseconds per request at p99 on
this machine, more than the lookup itself. Here: a threaded ``http.server`` (one thread
per keep-alive connection, Nagle off, the whole response written in one ``send``)
calling the synchronous SDK path (``FeatureStore.get_online_features`` through the
online store Feast is configured with) directly. The feature-service object is reused
until the registry cache refreshes, so a re-apply is picked up within
``registry_cache_ttl_s`` as with Feast's server.

Binds 127.0.0.1 unless told otherwise; no authentication (as ``feast serve`` without a
security manager): put it behind the network policy you trust. :func:`serve` runs this
server, or Feast's own when ``settings.feast.server`` is "feast".
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from feast.errors import FeatureServiceNotFoundException
from feast.feature_server_utils import convert_response_to_dict

from core.errors import NotBuiltError, ServiceError
from persona.serving.store import check_online_store, get_store, require_registry, user_errors

if TYPE_CHECKING:
    from feast import FeatureStore

    from core.settings import Settings

_JSON = "application/json"


class _Error(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _dumps(obj: Any) -> bytes:
    # What Starlette's JSONResponse (Feast's server) renders.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class FeatureServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, store: "FeatureStore", host: str = "127.0.0.1", port: int = 6566) -> None:
        self.store = store
        # name -> (registry cache stamp, FeatureService): Feast rebuilds the object from
        # its proto on every lookup; reuse it until the registry cache refreshes.
        self._services: dict[str, tuple[Any, Any]] = {}
        super().__init__((host, port), _Handler)

    def _service(self, name: str):
        registry = self.store.registry
        stamp = getattr(registry, "cached_registry_proto_created", None)
        hit = self._services.get(name)
        if hit is not None and stamp is not None and hit[0] == stamp:
            return hit[1]
        service = self.store.get_feature_service(name, allow_cache=True)
        self._services[name] = (getattr(registry, "cached_registry_proto_created", None), service)
        return service

    def online_features(self, body: dict) -> dict:
        """The response dict for one parsed request body (Feast's semantics)."""
        entities = body.get("entities")
        if not isinstance(entities, dict) or not entities or not all(isinstance(v, list) for v in entities.values()):
            raise _Error(422, "'entities' must be an object of lists, e.g. {\"user_id\": [\"u1\"]}")
        service = body.get("feature_service")
        store = self.store
        if service:
            try:
                features: Any = self._service(service)
            except FeatureServiceNotFoundException:
                raise _Error(404, f"unknown feature service {service!r}") from None
        else:
            features = body.get("features") or []
            if not features:
                raise _Error(422, "give 'feature_service' or a non-empty 'features' list")
        response = store.get_online_features(
            features=features, entity_rows=entities,
            full_feature_names=bool(body.get("full_feature_names", False)),
            include_feature_view_version_metadata=bool(body.get("include_feature_view_version_metadata", False)),
        )
        return convert_response_to_dict(response.proto)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    server: FeatureServer

    def log_message(self, format: str, *args: Any) -> None:  # no access log
        pass

    def _send(self, status: int, payload: bytes) -> None:
        # Status line, headers and body in one write: no Nagle/delayed-ACK stall.
        head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"content-type: {_JSON}\r\ncontent-length: {len(payload)}\r\n\r\n").encode("latin-1")
        self.wfile.write(head + payload)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b"{\"status\":\"ok\"}")
        else:
            self._send(404, _dumps({"detail": "Not Found"}))

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/get-online-features":
            self._send(404, _dumps({"detail": "Not Found"}))
            return
        try:
            try:
                body = json.loads(raw)
            except ValueError:
                raise _Error(422, "request body is not JSON") from None
            if not isinstance(body, dict):
                raise _Error(422, "request body must be a JSON object")
            self._send(200, _dumps(self.server.online_features(body)))
        except _Error as exc:
            self._send(exc.status, _dumps({"detail": exc.detail}))
        except Exception as exc:  # one line to the client, like Feast's 500s
            self._send(500, _dumps({"detail": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}))


def make_server(store: "FeatureStore", host: str = "127.0.0.1", port: int = 6566) -> FeatureServer:
    """Bind (port 0: any free port; ``server.server_address`` says which)."""
    server = FeatureServer(store, host, port)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return server


def serve_in_thread(store: "FeatureStore", host: str = "127.0.0.1", port: int = 0) -> tuple[FeatureServer, threading.Thread]:
    """Start a server in a daemon thread (tests, embedding); ``server.shutdown()`` stops it."""
    server = make_server(store, host, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    return server, thread


def serve(settings: "Settings", port: int | None = None, host: str | None = None) -> None:
    """An HTTP feature server (``POST /get-online-features``, Feast's JSON) on loopback;
    blocks. ``settings.feast.server``: "persona" (:class:`FeatureServer`, lean) or
    "feast" (Feast's own FastAPI server)."""
    require_registry(settings)
    check_online_store(settings)
    store = get_store(settings)
    with user_errors(settings):
        if not store.list_feature_services():  # fail now, not on the first request
            raise NotBuiltError("no feature services registered (run `persona apply` first)")
        if settings.feast.server == "persona":
            try:
                server = make_server(store, host or settings.feast.server_host, port or settings.feast.server_port)
            except OSError as exc:
                raise ServiceError(f"cannot listen on {host or settings.feast.server_host}:"
                                   f"{port or settings.feast.server_port}: {exc.strerror or exc}") from None
            try:
                server.serve_forever(poll_interval=0.5)
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
            return
        store.serve(
            host=host or settings.feast.server_host,
            port=port or settings.feast.server_port,
            type_="http",
            no_access_log=True,
            workers=1,
            registry_ttl_sec=settings.feast.registry_cache_ttl_s,
        )
