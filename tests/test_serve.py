"""The HTTP endpoint (runtime/serve.py): correct answers under concurrent load, a 4xx with a
JSON error for every malformed request and the server still serving after it, gate
telemetry, and the runtime-only entry point (no typer, onnx, scipy, z3)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tvm_helpers import COLLISION_BOX, gated_model, make_bundle

import relugate.runtime as rt
from relugate.runtime.serve import Server, make_server

LO, HI = np.array(COLLISION_BOX["lo"]), np.array(COLLISION_BOX["hi"])
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flag_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve") / "flag", policy="flag")


@pytest.fixture(scope="module")
def reject_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve") / "reject")


@contextmanager
def served(bundle: Path, **options: Any) -> Iterator[Server]:
    server = make_server(bundle, port=0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def connect(server: Server) -> http.client.HTTPConnection:
    host, port = server.server_address[:2]
    return http.client.HTTPConnection(str(host), port, timeout=30)


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    if body is not None and headers is None:
        headers = {"Content-Type": "application/json"}
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    assert response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(data)


def predict(conn: http.client.HTTPConnection, x: np.ndarray) -> tuple[int, dict[str, Any]]:
    return call(conn, "POST", "/predict", json.dumps({"inputs": x.tolist()}).encode())


def rows(rng: np.random.Generator, n: int, outside: float = 0.0) -> np.ndarray:
    """``n`` float32 inputs, a fraction ``outside`` of them pushed out of the domain."""
    x = LO + rng.random((n, 3)) * (HI - LO)
    out = rng.random(n) < outside
    x[out, 0] = HI[0] + 1 + rng.random(int(out.sum()))
    return x.astype(np.float32)


def assert_answers(model: rt.Model, x: np.ndarray, status: int, body: dict[str, Any]) -> None:
    """The endpoint's answer equals the runtime's own on the same input, bit for bit."""
    assert status == 200, body
    want = model.run_detailed(x)
    got = np.asarray(body["outputs"], dtype=np.float32)
    assert got.shape == want.output.shape
    np.testing.assert_array_equal(got, want.output)
    assert body["out_of_domain"] == want.out_of_domain.tolist()
    assert body["gate_fired"] == want.gate_fired.tolist()


def test_concurrent_load_is_correct(flag_bundle: Path, record_property: Any) -> None:
    """1,000 requests from 8 clients (keep-alive connections), batches of 1 to 8 rows with
    some out of the domain: every answer equals ``model.run`` on the same input."""
    reference = rt.load(flag_bundle)
    n_requests, n_clients = 1000, 8
    rng = np.random.default_rng(0)
    batches = [rows(rng, int(rng.integers(1, 9)), outside=0.1) for _ in range(n_requests)]
    with served(flag_bundle) as server:

        def client(k: int) -> list[tuple[float, int, dict[str, Any]]]:
            conn = connect(server)
            answers = []
            for x in batches[k::n_clients]:
                start = time.perf_counter()
                status, body = predict(conn, x)
                answers.append((time.perf_counter() - start, status, body))
            conn.close()
            return answers

        with ThreadPoolExecutor(n_clients) as pool:
            started = time.perf_counter()
            per_client = list(pool.map(client, range(n_clients)))
            wall = time.perf_counter() - started
        conn = connect(server)
        status, stats = call(conn, "GET", "/stats")
    latencies = []
    for k, answers in enumerate(per_client):
        for x, (seconds, status, body) in zip(batches[k::n_clients], answers, strict=True):
            assert_answers(reference, x, status, body)
            latencies.append(seconds)
    assert len(latencies) == n_requests
    total_rows = sum(len(x) for x in batches)
    flagged = sum(int(((x > HI) | (x < LO)).any(axis=1).sum()) for x in batches)
    assert status == 200 and stats["server"]["by_status"] == {"200": n_requests}
    assert stats["model"]["calls"] == n_requests and stats["model"]["inputs"] == total_rows
    assert stats["model"]["flagged"] == flagged > 0
    assert stats["model"] == reference.stats()  # the same calls, counted the same way
    p50, p99 = (float(np.percentile(latencies, q)) * 1e3 for q in (50, 99))
    summary = f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, {n_requests / wall:.0f} requests/s"
    print(f"\nserve: {n_requests} requests, {n_clients} clients: {summary}")
    record_property("serve_latency", summary)


def raw(server: Server, data: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``data`` as is on a fresh socket; the status and JSON body of the answer."""
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def post_bytes(body: bytes, ctype: str = "application/json") -> bytes:
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("bad JSON", post_bytes(b'{"inputs": [[10, 20, 30]'), 400, "bad JSON"),
    ("not UTF-8", post_bytes(b'{"inputs": [[\xff]]}'), 400, "bad JSON"),
    ("NaN", post_bytes(b'{"inputs": [[10, NaN, 30]]}'), 400, "bad JSON"),
    ("Infinity", post_bytes(b'{"inputs": [[10, 20, -Infinity]]}'), 400, "bad JSON"),
    ("beyond float32", post_bytes(b'{"inputs": [[10, 1e39, 30]]}'), 400, "bad input"),
    ("beyond float64", post_bytes(b'{"inputs": [[10, 1e400, 30]]}'), 400, "bad input"),
    ("wrong shape", post_bytes(b'{"inputs": [[10, 20]]}'), 400, "bad shape"),
    ("one sample, no list", post_bytes(b'{"inputs": [10, 20, 30]}'), 400, "bad shape"),
    ("ragged", post_bytes(b'{"inputs": [[10, 20, 30], [10]]}'), 400, "bad shape"),
    ("empty batch", post_bytes(b'{"inputs": []}'), 400, "bad shape"),
    ("strings", post_bytes(b'{"inputs": [["10", "20", "30"]]}'), 400, "bad input"),
    ("booleans", post_bytes(b'{"inputs": [[true, false, true]]}'), 400, "bad input"),
    ("null", post_bytes(b'{"inputs": null}'), 400, "bad input"),
    ("no inputs key", post_bytes(b'{"input": [[10, 20, 30]]}'), 400, "bad request"),
    ("not an object", post_bytes(b"[[10, 20, 30]]"), 400, "bad request"),
    ("deep nesting", post_bytes(b"[" * 100_000 + b"]" * 100_000), 400, "bad JSON"),
    ("wrong content type", post_bytes(b'{"inputs": [[10, 20, 30]]}', "text/plain"), 415, ""),
    (
        "huge body (declared)",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{",
        413,
        "body too large",
    ),
    ("huge body (sent)", post_bytes(b'{"inputs": [' + b"[10, 20, 30]," * 160_000), 413, ""),
    (
        "no length",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        411,
        "",
    ),
    ("unknown path", b"GET /predictions HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not found"),
    ("GET /predict", b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, ""),
    ("PUT", b"PUT /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, ""),
    ("out of domain", post_bytes(b'{"inputs": [[10, 20, 30], [10, 20, 41]]}'), 422, ""),
]


@pytest.mark.parametrize("name", [m[0] for m in MALFORMED])
def test_malformed_request_gets_4xx_then_server_serves(reject_bundle: Path, name: str) -> None:
    _, data, status, kind = next(m for m in MALFORMED if m[0] == name)
    reference = rt.load(reject_bundle)
    x = rows(np.random.default_rng(1), 5)
    with served(reject_bundle, max_body=256 * 1024) as server:
        conn = connect(server)
        assert_answers(reference, x, *predict(conn, x))  # a keep-alive connection, before
        got_status, body = raw(server, data)
        assert got_status == status, body
        assert body["message"] and (not kind or body["error"] == kind), body
        assert_answers(reference, x, *predict(conn, x))  # ... and after, on the same one
        assert_answers(reference, x, *predict(connect(server), x))  # and a new one
        _, stats = call(conn, "GET", "/stats")
    assert stats["server"]["by_status"] == {"200": 3, str(status): 1}


def test_health_and_gate_telemetry(tmp_path: Path) -> None:
    proto = gated_model(threshold=0.5)
    bundle = make_bundle(tmp_path / "gated", model=proto)
    reference = rt.load(bundle)
    x = np.random.default_rng(2).normal(0, 1, (64, 2)).astype(np.float32)
    want = reference.run_detailed(x)
    assert 0 < want.gate_fired.sum() < len(x)
    reference.reset_stats()
    with served(bundle) as server:
        conn = connect(server)
        status, health = call(conn, "GET", "/health")
        assert status == 200 and health["status"] == "ok"
        model = health["model"]
        assert model["gated"] is True and model["input"] == {"name": "x", "sample_shape": [2]}
        assert model["output"]["sample_shape"] == [3] and model["target"] == "llvm"
        assert_answers(reference, x, *predict(conn, x))
        assert_answers(reference, x[:1], *predict(conn, x[:1]))
        _, stats = call(conn, "GET", "/stats")
    fired = want.gate_fired
    assert stats["model"]["gate_fired"] == int(fired.sum()) + int(fired[0])
    assert stats["model"]["inputs"] == len(x) + 1 and stats["model"]["bad_inputs"] == 0
    assert stats["model"] == reference.stats()  # the same calls, counted the same way


BLOCKER = """
import sys
BLOCKED = ("onnx", "onnxruntime", "z3", "scipy", "onnx_graphsurgeon", "typer", "rich")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("the runtime server must not import " + name)
sys.meta_path.insert(0, Block())
from relugate.runtime.serve import main
sys.exit(main(sys.argv[1:]))
"""


def test_module_entry_point_needs_only_the_runtime(reject_bundle: Path) -> None:
    """``python -m relugate.runtime.serve`` with typer/rich/onnx/scipy/z3 unimportable:
    serves, answers, and stops cleanly on SIGTERM (what ``docker stop`` sends)."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-c", BLOCKER, str(reject_bundle), "--port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("serving "), (line, proc.stderr.read() if proc.stderr else "")
        host, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        x = rows(np.random.default_rng(3), 4)
        assert_answers(rt.load(reject_bundle), x, *predict(conn, x))
        status, health = call(conn, "GET", "/health")
        assert status == 200 and health["model"]["policy"] == "reject"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_bundle_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relugate.runtime.serve", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 5 and "no manifest.json" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_relugate_serve_command(reject_bundle: Path) -> None:
    """The CLI command: serves until SIGTERM; the CLI's exit codes for a bad bundle or port."""
    from cli_helpers import WIDE, invoke, relugate_exe

    result = invoke("serve", reject_bundle.parent / "missing", "--port", "0")
    assert result.exit_code == 5 and "not a folder" in result.stderr, result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = invoke("serve", reject_bundle, "--port", str(busy.getsockname()[1]))
    assert result.exit_code == 3 and "cannot listen" in result.stderr, result.stderr
    args = [str(relugate_exe()), "serve", str(reject_bundle), "--port", "0"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, env={**os.environ, **WIDE})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "serving" in line, line
        host, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
        status, health = call(http.client.HTTPConnection(host, int(port)), "GET", "/health")
        assert status == 200 and health["bundle"] == str(reject_bundle)
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PREDICT = BLOCKER.replace("relugate.runtime.serve", "relugate.runtime.predict")


def test_predict_command_needs_only_the_runtime(reject_bundle: Path, tmp_path: Path) -> None:
    """``python -m relugate.runtime.predict`` (the runtime image's CLI): outputs equal
    ``model.run``, written atomically; bad files and bundles give the CLI's exit codes."""
    x = rows(np.random.default_rng(4), 6)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}

    def predict_cli(*args: Path | str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", PREDICT, *map(str, args)],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip

    done = predict_cli(reject_bundle, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), rt.load(reject_bundle).run(x))
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert summary["rows"] == 6 and summary["stats"]["inputs"] == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    done = predict_cli(reject_bundle, tmp_path / "bad.npy")
    assert done.returncode == 3 and "not a readable .npy" in done.stderr, done.stderr
    done = predict_cli(tmp_path, tmp_path / "x.npy")
    assert done.returncode == 5 and "no manifest.json" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_serve_benchmark_runs_small() -> None:
    """benchmarks/serve.py end to end on a few requests (its own server process): no
    errors, no wrong outputs, every row counted, the table rendered."""
    import argparse

    from benchmarks import serve as bench

    result = bench.run(argparse.Namespace(requests=24, clients=4))
    assert [(c["rows_per_request"], c["keep_alive"]) for c in result["cases"]] == bench.CASES
    for case in result["cases"]:
        assert case["errors"] == 0 and case["wrong_outputs"] == 0, case
        assert 0 < case["p50_ms"] <= case["p99_ms"] and case["requests_per_s"] > 0
    assert result["server_stats"]["server"]["by_status"] == {"200": 24 * len(bench.CASES)}
    table = bench.markdown(result)
    assert table.count("\n| ") == len(bench.CASES) + 1  # header and one row per case


def test_connections_over_the_limit_get_503(reject_bundle: Path) -> None:
    """With --max-connections 2, a third open connection is answered 503 and closed; once
    a connection closes, new ones are served again."""
    reference = rt.load(reject_bundle)
    x = rows(np.random.default_rng(5), 2)
    with served(reject_bundle, max_connections=2) as server:
        first, second = connect(server), connect(server)
        assert_answers(reference, x, *predict(first, x))  # both held open (keep-alive)
        assert_answers(reference, x, *predict(second, x))
        status, body = predict(connect(server), x)
        assert status == 503 and body["error"] == "busy", body
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the first connection's thread ends when it sees the close
            status, body = predict(connect(server), x)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert_answers(reference, x, status, body)
        assert_answers(reference, x, *predict(second, x))
        _, stats = call(second, "GET", "/stats")
    assert stats["server"]["by_status"]["503"] >= 1
