"""A minimal HTTP endpoint for a bundle, on the standard library only.

    python -m relugate.runtime.serve BUNDLE [--host 127.0.0.1] [--port 8080] [--max-body BYTES]

(``relugate serve`` does the same from the full install; ``--host`` and ``--port``
default to ``$RELUGATE_HOST`` and ``$RELUGATE_PORT``, which the Docker image sets.)
Endpoints:

``GET /health``   200 ``{"status": "ok", "bundle": ..., "model": {input, output, target,
                  policy, gated, domain, versions}}``
``POST /predict`` ``{"inputs": [sample, ...]}`` (``Content-Type: application/json``) ->
                  ``{"outputs": [...], "out_of_domain": [bool, ...], "gate_fired": [bool, ...]}``
``GET /stats``    ``{"model": model.stats(), "server": {requests, by_status, uptime_s}}``

Errors answer JSON ``{"error": kind, "message": ...}``: 400 bad JSON, shape, NaN/Inf or
non-numbers; 404 unknown path; 405 wrong method; 411 no Content-Length; 413 body over
``--max-body``; 415 not JSON; 422 out of the domain (policy ``reject``); 500 a bug;
503 more than ``--max-connections`` open connections.
The server keeps serving after each.  HTTP/1.1 keep-alive; one thread per connection.
Needs only numpy and the TVM runtime (no typer, onnx, scipy or z3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from relugate.runtime.endpoint import MAX_BODY, Endpoint, Reply, error

READ_TIMEOUT_S = 30.0
"""A connection idle (or sending its body) this long is closed."""
LINGER_S = 2.0
"""How long a refused request's unread body is drained before the connection closes."""
MAX_CONNECTIONS = 64
"""Connections served at once (one thread each); more get a 503."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "relugate-serve"
    timeout = READ_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait
    server: Server

    # -- routes -------------------------------------------------------------
    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(endpoint.health())
        elif path == "/stats":
            self._send(endpoint.stats())
        elif path == "/predict":
            self._send(error(405, "method not allowed", "use POST /predict"), allow="POST")
        else:
            self._send(error(404, "not found", f"no endpoint {path!r}; see GET /health"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/predict":
            known = path in ("/health", "/stats")
            reply = (
                error(405, "method not allowed", f"use GET {path}")
                if known
                else error(404, "not found", f"no endpoint {path!r}; see GET /health")
            )
            self.close_connection = True  # the body, if any, is not read
            self._send(reply, allow="GET" if known else None)
            return
        body = self._read_body()
        if isinstance(body, Reply):
            self._send(body)
            return
        try:
            reply = self.server.endpoint.predict(body)
        except Exception as exc:  # a bug: answer 500, log it, keep serving
            traceback.print_exc(file=sys.stderr)
            reply = error(500, "internal error", f"{exc.__class__.__name__}: {exc}")
        self._send(reply)

    def _other(self) -> None:
        self.close_connection = True
        self._send(error(405, "method not allowed", "use GET /health, GET /stats, POST /predict"))

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other

    # -- plumbing -----------------------------------------------------------
    def _read_body(self) -> bytes | Reply:
        """The request body, or the 4xx to answer (the connection then closes unless the
        whole body was read)."""
        ctype = self.headers.get("Content-Type", "")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return error(411, "length required", "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            return error(411, "length required", "send the body with a Content-Length")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return error(400, "bad request", f"bad Content-Length {length_text!r}")
        limit = self.server.endpoint.max_body
        if length > limit:
            self.close_connection = True  # not read: the stream cannot be reused
            return error(413, "body too large", f"{length} bytes; the limit is {limit}")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return error(400, "bad request", "the body ended before Content-Length bytes")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            return error(415, "unsupported media type", "send Content-Type: application/json")
        return body

    def _send(self, reply: Reply, allow: str | None = None) -> None:
        self.server.endpoint.count(reply.status)
        data = json.dumps(reply.body, allow_nan=False, separators=(",", ":")).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", allow)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        if self.close_connection:
            self._linger()

    def _linger(self) -> None:
        """Before closing a connection whose request body was not read: stop sending, then
        read and drop what the client still sends (for up to LINGER_S).  Closing with
        unread data makes the kernel reset the connection, and a client still sending its
        body could lose the answer (nginx's lingering close)."""
        deadline = time.monotonic() + LINGER_S
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break
        except OSError:  # reset by the client, timed out: nothing more to do
            pass

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.access_log:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:  # malformed request lines, timeouts
        super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at once: a connection over
    the limit gets a 503 (JSON, ``Retry-After: 1``) and is closed, so idle or slow
    clients cannot exhaust a small device's threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        endpoint: Endpoint,
        access_log: bool,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.endpoint = endpoint
        self.access_log = access_log
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 from a short-lived thread of its own (at most about 2 * LINGER_S):
        it reads the request head first, so the client's send completes and it gets the
        answer, then drains what follows before closing."""
        self.endpoint.count(503)
        threading.Thread(target=self._answer_busy, args=(request,), daemon=True).start()

    def _answer_busy(self, request: socket.socket) -> None:
        message = f"more than {self.max_connections} connections; retry shortly"
        body = json.dumps({"error": "busy", "message": message}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(LINGER_S)
            seen = b""
            while b"\r\n\r\n" not in seen and len(seen) < 65536:
                chunk = request.recv(4096)
                if not chunk:
                    break
                seen += chunk
            request.sendall(head.encode() + body)
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(65536):
                    break
        except OSError:  # reset, timed out: nothing more to do
            pass
        finally:
            self.shutdown_request(request)


def make_server(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_body: int = MAX_BODY,
    access_log: bool = False,
    max_connections: int = MAX_CONNECTIONS,
) -> Server:
    """Load ``bundle`` (all its checks first) and bind; ``port=0`` picks a free port.
    Call ``serve_forever()`` on the result (in a thread, or as ``run`` does)."""
    from relugate.runtime import load

    endpoint = Endpoint(load(bundle), max_body)
    return Server((host, port), endpoint, access_log, max_connections)


def run(server: Server) -> None:
    """Serve until SIGTERM or SIGINT (a container's PID 1 ignores SIGTERM without a
    handler), then close the socket."""

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relugate.runtime.serve", description="Serve a relugate bundle over HTTP."
    )
    parser.add_argument("bundle", help="bundle folder (written by relugate compile)")
    host = os.environ.get("RELUGATE_HOST", "127.0.0.1")
    port = os.environ.get("RELUGATE_PORT", "8080")
    parser.add_argument(
        "--host",
        default=host,
        help="address to bind (0.0.0.0: all); default $RELUGATE_HOST or 127.0.0.1",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=port,
        help="port (0: any free port); default $RELUGATE_PORT or 8080",
    )
    parser.add_argument("--max-body", type=int, default=MAX_BODY, help="request body limit")
    parser.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS, help="connections at once"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    from relugate.runtime.errors import BadInput, RelugateError

    try:
        server = make_server(
            args.bundle, args.host, args.port, args.max_body, args.access_log, args.max_connections
        )
    except RelugateError as exc:
        print(f"error ({exc.kind}): {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # address in use, permission denied
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return BadInput.exit_code
    print(f"serving {args.bundle} on {server.url}", flush=True)
    run(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
