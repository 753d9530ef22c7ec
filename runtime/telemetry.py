"""Counters a deployed model keeps: calls, inputs, out-of-domain inputs, gate firings.

Thread-safe (one lock, taken once per call).  ``snapshot`` returns plain
JSON-serializable values.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CallCounts:
    inputs: int = 0
    out_of_domain: int = 0
    rejected: int = 0
    clamped: int = 0
    flagged: int = 0
    gate_fired: int = 0
    gate_fired_by_output: np.ndarray | None = None  # per output element: inputs it changed
    bad_inputs: int = 0
    region_checked: int = 0  # rows compared with the proved-safe regions (run_detailed)
    in_safe_region: int = 0
    gate_fired_in_safe_region: int = 0


@dataclass
class Telemetry:
    n_outputs: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    calls: int = 0
    totals: CallCounts = field(default_factory=CallCounts)

    def __post_init__(self) -> None:
        self.totals.gate_fired_by_output = np.zeros(self.n_outputs, dtype=np.int64)

    def record(self, counts: CallCounts) -> None:
        with self._lock:
            self.calls += 1
            t = self.totals
            t.inputs += counts.inputs
            t.out_of_domain += counts.out_of_domain
            t.rejected += counts.rejected
            t.clamped += counts.clamped
            t.flagged += counts.flagged
            t.gate_fired += counts.gate_fired
            t.bad_inputs += counts.bad_inputs
            t.region_checked += counts.region_checked
            t.in_safe_region += counts.in_safe_region
            t.gate_fired_in_safe_region += counts.gate_fired_in_safe_region
            if counts.gate_fired_by_output is not None and t.gate_fired_by_output is not None:
                t.gate_fired_by_output += counts.gate_fired_by_output

    def record_gates(self, inputs: int, fired: int, by_output: dict[int, int]) -> None:
        """A call whose inputs were all in the domain; ``fired`` rows changed by gates,
        ``by_output[j]`` rows with output element ``j`` changed."""
        with self._lock:
            self.calls += 1
            t = self.totals
            t.inputs += inputs
            t.gate_fired += fired
            if t.gate_fired_by_output is not None:
                for j, count in by_output.items():
                    t.gate_fired_by_output[j] += count

    def record_counted(self, inputs: int, fired: int, by_output: np.ndarray) -> None:
        """``record_gates`` with the per-element counts as an array (the library's own)."""
        with self._lock:
            self.calls += 1
            t = self.totals
            t.inputs += inputs
            t.gate_fired += fired
            if t.gate_fired_by_output is not None:
                t.gate_fired_by_output += by_output.reshape(-1).astype(np.int64)

    def record_clean(self, inputs: int) -> None:
        """A call whose inputs were all in the domain and fired no gate."""
        with self._lock:
            self.calls += 1
            self.totals.inputs += inputs

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            t = self.totals
            by_output = t.gate_fired_by_output
            return {
                "calls": self.calls,
                "inputs": t.inputs,
                "out_of_domain": t.out_of_domain,
                "rejected": t.rejected,
                "clamped": t.clamped,
                "flagged": t.flagged,
                "gate_fired": t.gate_fired,
                "gate_fired_by_output": [] if by_output is None else by_output.tolist(),
                "bad_inputs": t.bad_inputs,
                "region_checked": t.region_checked,
                "in_safe_region": t.in_safe_region,
                "gate_fired_in_safe_region": t.gate_fired_in_safe_region,
            }

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.totals = CallCounts(gate_fired_by_output=np.zeros(self.n_outputs, np.int64))
