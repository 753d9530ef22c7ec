"""What the HTTP endpoint answers, without the HTTP: request bodies in, (status, JSON) out.

``Endpoint`` wraps a loaded ``Model``.  ``predict`` takes the raw body of a
``POST /predict`` (``{"inputs": [sample, ...]}``, each sample shaped like the
model input without its batch axis) and returns the outputs with, per row,
whether it lay outside the domain and whether a gate fired.  Every refusal is
a ``Reply`` with a 4xx status and ``{"error": kind, "message": ...}``; nothing
here raises for bad input.  Standard library and numpy only.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from relugate.runtime.errors import BadInput, OutOfDomain
from relugate.runtime.model import Model

MAX_BODY = 4 * 1024 * 1024
"""Default request body limit in bytes (about 30,000 rows of a 3-input model)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


def error(status: int, kind: str, message: str) -> Reply:
    return Reply(status, {"error": kind, "message": message})


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not allowed (inputs must be finite numbers)")


class Endpoint:
    """The model behind the server, its summary, and the server's request counters."""

    def __init__(self, model: Model, max_body: int = MAX_BODY) -> None:
        self.model = model
        self.max_body = max_body
        self.started = time.time()
        self._lock = threading.Lock()
        self._by_status: Counter[int] = Counter()

    # -- counters -----------------------------------------------------------
    def count(self, status: int) -> None:
        with self._lock:
            self._by_status[status] += 1

    def server_stats(self) -> dict[str, Any]:
        with self._lock:
            by_status = {str(k): v for k, v in sorted(self._by_status.items())}
            total = sum(self._by_status.values())
        return {
            "requests": total,
            "by_status": by_status,
            "uptime_s": round(time.time() - self.started, 3),
        }

    # -- GET ----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        m, manifest = self.model, self.model.manifest
        return {
            "input": {"name": m.input_name, "sample_shape": list(m.sample_shape)},
            "output": {"name": m.output_name, "sample_shape": list(m.output_sample_shape)},
            "target": manifest["target"]["name"],
            "machine": manifest["target"]["machine"],
            "policy": m.policy,
            "gated": m.gated,
            "domain": manifest.get("domain"),
            "relugate_version": manifest.get("relugate_version"),
            "tvm_version": manifest.get("tvm_version"),
            "max_body_bytes": self.max_body,
        }

    def health(self) -> Reply:
        return Reply(200, {"status": "ok", "bundle": self.model.path, "model": self.summary()})

    def stats(self) -> Reply:
        return Reply(200, {"model": self.model.stats(), "server": self.server_stats()})

    # -- POST ---------------------------------------------------------------
    def predict(self, body: bytes) -> Reply:
        parsed = self._parse(body)
        if isinstance(parsed, Reply):
            return parsed
        try:
            result = self.model.run_detailed(parsed)
        except OutOfDomain as exc:
            return error(422, "out of domain", str(exc))
        except BadInput as exc:
            return error(400, "bad input", str(exc))
        output = np.asarray(result.output)
        if not np.isfinite(output).all():  # json would write NaN/Infinity, which is not JSON
            return error(500, "internal error", "the model produced a non-finite output")
        return Reply(
            200,
            {
                "outputs": output.tolist(),
                "out_of_domain": result.out_of_domain.tolist(),
                "gate_fired": result.gate_fired.tolist(),
            },
        )

    def _parse(self, body: bytes) -> np.ndarray | Reply:
        """The batch in ``body`` as float64 ``(n, *sample_shape)``, or the 400 to answer."""
        try:
            request = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
        except UnicodeDecodeError:
            return error(400, "bad JSON", "the body is not UTF-8")
        except RecursionError:
            return error(400, "bad JSON", "the body is nested too deeply")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError, as is NaN/Infinity
            return error(400, "bad JSON", str(exc))
        if not isinstance(request, dict) or "inputs" not in request:
            return error(400, "bad request", 'the body must be a JSON object {"inputs": [...]}')
        sample = self.model.sample_shape
        expected = f"(N, {', '.join(map(str, sample))})" if sample else "(N,)"
        try:
            array = np.asarray(request["inputs"])
        except ValueError:  # ragged nesting
            return error(400, "bad shape", f'"inputs" must be a rectangular array {expected}')
        if array.dtype.kind not in "iuf":  # strings, booleans, null, objects, huge integers
            return error(400, "bad input", '"inputs" must hold numbers only')
        if array.ndim != len(sample) + 1 or array.shape[1:] != sample or len(array) == 0:
            return error(
                400,
                "bad shape",
                f'"inputs" must have shape {expected} (a list of samples); got {array.shape}',
            )
        return array.astype(np.float64, copy=False)
