"""A small Confluent-compatible schema registry for the embedded stack and the tests.

Production points ``CHARGEMESH_SCHEMA_REGISTRY_URL`` at a real Confluent Schema Registry (or any
server speaking its REST API). This machine has no way to install one (no Maven or container
registry access), so the embedded stack carries the part of that REST API the Confluent clients
use for Avro serialisation, over plain HTTP:

- ``POST /subjects/{subject}/versions`` registers a schema (the same schema text under any subject
  gets the same id; re-registering returns the existing id);
- ``GET /schemas/ids/{id}``, ``GET /subjects``, ``GET /subjects/{subject}/versions``,
  ``GET /subjects/{subject}/versions/{version|latest}``.

Schemas are kept in a JSON file when one is given, so ids survive a restart. Run it with
``python -m chargemesh.infra.stack.registry_server --port 18081 [--store FILE]``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Any

SCHEMA_BYTES_MAX = 1_000_000
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryState:
    """Schemas by id and the versions of each subject; thread-safe; optionally persisted."""

    def __init__(self, store: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._store = store
        self.schemas: list[str] = []  # id - 1 -> schema text
        self.subjects: dict[str, list[int]] = {}  # subject -> schema ids, version - 1
        if store is not None and store.exists():
            raw = json.loads(store.read_text("utf-8"))
            self.schemas = list(raw["schemas"])
            self.subjects = {k: list(v) for k, v in raw["subjects"].items()}

    def register(self, subject: str, schema: str) -> tuple[int, int]:
        """(id, version) of ``schema`` under ``subject``, registering what is new."""
        with self._lock:
            if schema in self.schemas:
                schema_id = self.schemas.index(schema) + 1
            else:
                self.schemas.append(schema)
                schema_id = len(self.schemas)
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
                self._save()
            return schema_id, versions.index(schema_id) + 1

    def _save(self) -> None:
        if self._store is not None:
            tmp = self._store.with_suffix(".tmp")
            tmp.write_text(json.dumps({"schemas": self.schemas, "subjects": self.subjects}))
            tmp.replace(self._store)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "RegistryServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int, message: str) -> None:
        self._reply(status, {"error_code": code, "message": message})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = urllib.parse.urlparse(self.path).path
        match = re.fullmatch(r"/subjects/([^/]+)/versions", path)
        if not match:
            return self._error(404, 404, f"no route {path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length > SCHEMA_BYTES_MAX:
            return self._error(413, 413, "schema too large")
        try:
            request = json.loads(self.rfile.read(length))
            schema = request["schema"]
            if request.get("schemaType", "AVRO") != "AVRO":
                return self._error(422, 42201, "only AVRO schemas are served here")
            json.loads(schema)
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(422, 42201, f"invalid schema: {exc}")
        subject = urllib.parse.unquote(match.group(1))
        schema_id, version = self.server.state.register(subject, schema)
        self._reply(200, {"id": schema_id, "subject": subject, "version": version,
                          "schema": schema})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        state = self.server.state
        path = urllib.parse.urlparse(self.path).path
        if match := re.fullmatch(r"/schemas/ids/(\d+)", path):
            schema_id = int(match.group(1))
            if not 1 <= schema_id <= len(state.schemas):
                return self._error(404, 40403, f"schema {schema_id} not found")
            return self._reply(200, {"schema": state.schemas[schema_id - 1]})
        if path == "/subjects":
            return self._reply(200, sorted(state.subjects))
        if match := re.fullmatch(r"/subjects/([^/]+)/versions(?:/(\w+))?", path):
            subject = urllib.parse.unquote(match.group(1))
            versions = state.subjects.get(subject)
            if versions is None:
                return self._error(404, 40401, f"subject {subject} not found")
            if match.group(2) is None:
                return self._reply(200, list(range(1, len(versions) + 1)))
            wanted = match.group(2)
            version = len(versions) if wanted == "latest" else int(wanted)
            if not 1 <= version <= len(versions):
                return self._error(404, 40402, f"version {wanted} not found")
            schema_id = versions[version - 1]
            return self._reply(200, {"subject": subject, "version": version, "id": schema_id,
                                     "schema": state.schemas[schema_id - 1]})
        return self._error(404, 404, f"no route {path}")


class RegistryServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, store: Path | None = None) -> None:
        super().__init__((host, port), _Handler)
        self.state = RegistryState(store)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start_background(self) -> "RegistryServer":
        self._thread = threading.Thread(target=self.serve_forever, name="schema-registry",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    server = RegistryServer(args.host, args.port, args.store)
    print(f"schema registry on {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
