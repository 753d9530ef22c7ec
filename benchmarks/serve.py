"""HTTP endpoint benchmark (issue 8): latency and throughput of ``relugate.runtime.serve``.

The shipped example (``examples/collision.onnx`` with its property) is compiled into a
bundle (``--target llvm``), served by ``python -m relugate.runtime.serve`` in its own
process, and called by ``--clients`` concurrent clients (threads of this process, one
HTTP/1.1 keep-alive connection each, or a new connection per request) with
``--requests`` requests per case.  Each case: batch size, connection mode; per request
the client-side latency (send to full answer parsed).  Every answer is compared, bit
for bit, with ``Model.run`` on the same input in this process; the server's ``/stats``
must count every row.

    OPENBLAS_NUM_THREADS=1 nice python -m benchmarks.serve [--requests 2000] [--clients 8]

Writes benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.meta import run_meta
from relugate.compiler.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL, SPEC = ROOT / "examples" / "collision.onnx", ROOT / "examples" / "collision.vnnlib"
CASES = [(1, True), (1, False), (64, True)]  # (rows per request, keep-alive)


def compile_bundle(out: Path) -> Path:
    from relugate.compiler.compile import CompileOptions, compile_model

    compile_model(MODEL, CompileOptions(out_dir=out, overwrite=True, target="llvm"), specs=[SPEC])
    return out


def start_server(bundle: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    args = [sys.executable, "-m", "relugate.runtime.serve", str(bundle), "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
    return proc, host, int(port)


def one_case(
    host: str, port: int, batches: list[np.ndarray], clients: int, keep_alive: bool
) -> tuple[list[float], list[tuple[int, Any]], float]:
    """Latency of every request, the answers (in request order), and the wall time."""

    def client(k: int) -> list[tuple[int, float, int, Any]]:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        done = []
        for i in range(k, len(batches), clients):
            body = json.dumps({"inputs": batches[i].tolist()})
            start = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            done.append((i, time.perf_counter() - start, response.status, answer))
            if not keep_alive:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.close()
        return done

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        results = [r for part in pool.map(client, range(clients)) for r in part]
        wall = time.perf_counter() - start
    results.sort(key=lambda r: r[0])
    return [r[1] for r in results], [(r[2], r[3]) for r in results], wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    import relugate.runtime as rt

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="relugate-serve-bench-") as tmp:
        bundle = compile_bundle(Path(tmp) / "bundle")
        reference = rt.load(bundle)
        lo, hi = (np.asarray(b, np.float64) for b in reference.domain or ())
        rng = np.random.default_rng(0)
        proc, host, port = start_server(bundle)
        try:
            cases = []
            for batch, keep_alive in CASES:
                shape = (args.requests, batch, *reference.sample_shape)
                x = (lo + rng.random(shape) * (hi - lo)).astype(np.float32)
                batches = list(x)
                latencies, answers, wall = one_case(host, port, batches, args.clients, keep_alive)
                errors = sum(status != 200 for status, _ in answers)
                wrong = sum(
                    status == 200
                    and not np.array_equal(
                        np.asarray(answer["outputs"], np.float32), reference.run(xb)
                    )
                    for xb, (status, answer) in zip(batches, answers, strict=True)
                )
                ms = np.asarray(latencies) * 1e3
                cases.append(
                    {
                        "rows_per_request": batch,
                        "keep_alive": keep_alive,
                        "requests": args.requests,
                        "clients": args.clients,
                        "errors": int(errors),
                        "wrong_outputs": int(wrong),
                        "p50_ms": round(float(np.percentile(ms, 50)), 3),
                        "p90_ms": round(float(np.percentile(ms, 90)), 3),
                        "p99_ms": round(float(np.percentile(ms, 99)), 3),
                        "max_ms": round(float(ms.max()), 3),
                        "requests_per_s": round(args.requests / wall, 1),
                        "rows_per_s": round(args.requests * batch / wall, 1),
                    }
                )
                print(json.dumps(cases[-1]), flush=True)
            conn = http.client.HTTPConnection(host, port, timeout=60)
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows = sum(c["requests"] * c["rows_per_request"] for c in cases)
    if stats["model"]["inputs"] != rows:
        raise SystemExit(f"the server counted {stats['model']['inputs']} rows, not {rows}")
    meta = run_meta(
        requests=args.requests,
        clients=args.clients,
        cores=os.cpu_count(),
        load_average_at_start=round(load_start, 2),
        load_average_at_end=round(os.getloadavg()[0], 2),
    )
    return {**meta, "server_stats": stats, "cases": cases}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# HTTP endpoint (issue 8)",
        "",
        f"`python -m relugate.runtime.serve` on the shipped example bundle (collision net, "
        f"llvm), relugate {result['relugate']}, {result['machine']}, {result['cores']} cores "
        f"shared by server and clients (load average {result['load_average_at_start']:.1f} at "
        f"start, {result['load_average_at_end']:.1f} at end: other work shared the machine), "
        f"{result['date']}. {result['clients']} concurrent "
        "clients (threads of one process), each request's latency measured by its client; "
        "every answer compared bit for bit with `Model.run` on the same input.",
        "",
        "| rows/request | connection | requests | errors | wrong | p50 ms | p90 ms | p99 ms "
        "| requests/s | rows/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        mode = "keep-alive" if c["keep_alive"] else "new per request"
        lines.append(
            f"| {c['rows_per_request']} | {mode} | {c['requests']} | {c['errors']} | "
            f"{c['wrong_outputs']} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} "
            f"| {c['requests_per_s']:.0f} | {c['rows_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per case")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "serve.json", result)
    md = RESULTS / "serve.md"
    tmp = md.with_name(".serve.md.tmp")
    tmp.write_text(markdown(result))
    os.replace(tmp, md)
    print(markdown(result))
    bad = sum(c["errors"] + c["wrong_outputs"] for c in result["cases"])
    if bad:
        raise SystemExit(f"{bad} request(s) failed or answered wrong (see serve.json)")


if __name__ == "__main__":
    main()
