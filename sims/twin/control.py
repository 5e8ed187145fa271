"""The twin's control API: inject faults into a running `qkdtel sims up`, over HTTP on loopback.

Why a process boundary: the operator (and every test) changes the network the way it would be
changed in the field, from outside, while the collector polls; nobody pokes Python objects
across processes. `sims up` serves it (`ControlServer`), `qkdtel sims fault` is its client
(`request`). JSON in and out:

    GET  /state                                          the model's state
    POST /faults      {"link": "4", "loss_db": 3, "at_km": 12.5, "kind": "bend"}
    POST /faults/clear {"link": "4"}                     (no link: every link)
    POST /devices     {"name": "sw-quevedo", "up": false}
    POST /consumption {"a": "Quevedo", "b": "Norte", "bps": 5000}

A bad request answers 400 with {"error": "one line"}; the client exits 2 with that line.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from qkdtel.sims.twin.model import TwinModel

MAX_BODY = 64 * 1024


class BadRequest(ValueError):
    """What the client asked cannot be done: the message says why, in one line."""


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key!r} must be a non-empty string")
    return value


def _number(body: dict[str, Any], key: str, default: float | None = None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key!r} must be a number")
    return float(value)


def _add_fault(model: TwinModel, body: dict[str, Any]) -> dict[str, Any]:
    loss = _number(body, "loss_db")
    if loss is None:
        raise BadRequest("'loss_db' is required")
    fault = model.add_fibre_fault(
        _text(body, "link"), loss, _number(body, "at_km"), body.get("kind", "bend")
    )
    return asdict(fault)


def _clear(model: TwinModel, body: dict[str, Any]) -> dict[str, Any]:
    link = body.get("link")
    model.clear_fibre_faults(None if link is None else _text(body, "link"))
    return {"cleared": link or "all"}


def _device(model: TwinModel, body: dict[str, Any]) -> dict[str, Any]:
    name, up = _text(body, "name"), body.get("up")
    if not isinstance(up, bool):
        raise BadRequest("'up' must be true or false")
    model.set_device_up(name, up)
    return {"name": name, "up": up}


def _consumption(model: TwinModel, body: dict[str, Any]) -> dict[str, Any]:
    a, b, bps = _text(body, "a"), _text(body, "b"), _number(body, "bps")
    if bps is None:
        raise BadRequest("'bps' is required")
    model.set_consumption(a, b, bps)
    return {"a": a, "b": b, "bps": bps}


ACTIONS: dict[str, Callable[[TwinModel, dict[str, Any]], dict[str, Any]]] = {
    "/faults": _add_fault,
    "/faults/clear": _clear,
    "/devices": _device,
    "/consumption": _consumption,
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `sims up` logs the changes themselves."""

    def do_GET(self) -> None:
        if self.path == "/state":
            self._send(200, self.server.model.state())
        else:
            self._send(404, {"error": f"no {self.path}: GET /state"})

    def do_POST(self) -> None:
        action = ACTIONS.get(self.path)
        if action is None:
            self._send(404, {"error": f"no {self.path}: POST {', '.join(ACTIONS)}"})
            return
        try:
            self._send(200, action(self.server.model, self._body()))
        except ValueError as exc:  # BadRequest, and the model's own refusals
            self._send(400, {"error": str(exc)})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise BadRequest(f"body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: TwinModel):
        self.model = model
        super().__init__(address, _Handler)


class ControlServer:
    """The control API of `model`, served from a thread until `stop`."""

    def __init__(self, model: TwinModel, host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), model)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="twin-control", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def control_file(config_out: Path) -> Path:
    """Where `sims up --config-out FILE` writes the control URL: `FILE` as `.twin.json`."""
    return Path(config_out).with_suffix(".twin.json")


def resolve(control: str) -> str:
    """A control URL, or the path of the config `sims up` wrote (its `.twin.json` read)."""
    if control.startswith(("http://", "https://")):
        return control.rstrip("/")
    path = control_file(Path(control))
    try:
        return json.loads(path.read_text(encoding="utf-8"))["control_url"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"{path}: no control URL there ({exc})") from None


def request(control: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Ask the control API (`body` None: GET); a refusal or no answer raises `BadRequest`."""
    url = resolve(control) + path
    try:
        if body is None:
            response = httpx.get(url, timeout=10)
        else:
            response = httpx.post(url, json=body, timeout=10)
    except httpx.HTTPError as exc:
        raise BadRequest(f"{url}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        raise BadRequest(f"{url}: answered {response.status_code}, not JSON") from None
    if response.status_code != 200:
        raise BadRequest(f"{url}: {answer.get('error', response.status_code)}")
    return answer
