"""Call a running relugate endpoint the way a client would; print a JSON summary.

    python3 docker/smoke.py URL [KEY=VALUE ...]

Standard library only (the host that runs it may have nothing else).  Waits up to two
minutes for ``GET /health``, then: ``POST /predict`` on the center and the corners of
the bundle's domain (from /health), a row outside the domain (422 under policy
``reject``, flagged otherwise), malformed JSON (400), ``GET /stats``, and 200 timed
requests.  Exits 1 with a message at the first wrong answer.  KEY=VALUE pairs are
copied into the summary (image name, size, ...).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def call(url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait(url: str, seconds: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            status, body = call(f"{url}/health")
            if status == 200:
                return body
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke: no answer from {url}/health within {seconds:.0f} s")
        time.sleep(0.5)


def expect(ok: bool, what: str, got: object) -> None:
    if not ok:
        raise SystemExit(f"smoke: {what}: got {got!r}")


def predict(url: str, rows: list[list[float]]) -> tuple[int, dict[str, Any]]:
    return call(f"{url}/predict", json.dumps({"inputs": rows}).encode())


def main(argv: list[str]) -> int:
    url = argv[0].rstrip("/")
    summary: dict[str, Any] = dict(a.split("=", 1) for a in argv[1:])
    health = wait(url)
    model = health["model"]
    expect(health["status"] == "ok", "health status", health)
    domain = model["domain"]
    expect(domain is not None and len(model["input"]["sample_shape"]) == 1, "flat domain", model)
    lo, hi = domain["lo"], domain["hi"]
    corners = [list(c) for c in itertools.islice(itertools.product(*zip(lo, hi, strict=True)), 16)]
    rows = [[(a + b) / 2 for a, b in zip(lo, hi, strict=True)], *corners]
    status, answer = predict(url, rows)
    expect(status == 200, "predict status", (status, answer))
    outputs = answer["outputs"]
    width = model["output"]["sample_shape"]
    expect(len(outputs) == len(rows) and all(len(o) == width[0] for o in outputs), "shape", answer)
    expect(answer["out_of_domain"] == [False] * len(rows), "in-domain rows", answer)
    outside = [lo[0] - 1.0, *rows[0][1:]]
    status, refused = predict(url, [outside])
    if model["policy"] == "reject":
        expect(status == 422 and refused["error"] == "out of domain", "out-of-domain row", refused)
    else:
        expect(status == 200 and refused["out_of_domain"] == [True], "flagged row", refused)
    status, bad = call(f"{url}/predict", b'{"inputs": [[1, 2')
    expect(status == 400 and bad["error"] == "bad JSON", "malformed JSON", (status, bad))
    times = []
    for _ in range(200):
        start = time.perf_counter()
        status, _ = predict(url, rows[:1])
        times.append(time.perf_counter() - start)
        expect(status == 200, "timed request", status)
    status, stats = call(f"{url}/stats")
    counted = len(rows) + 200 + (model["policy"] != "reject")  # a rejected row is not run
    expect(status == 200 and stats["model"]["inputs"] == counted, "stats", stats)
    summary.update(
        health=model,
        inputs=rows,
        outputs=outputs,
        stats=stats,
        sequential_p50_ms=round(statistics.median(times) * 1e3, 3),
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
