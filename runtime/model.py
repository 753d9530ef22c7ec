"""A loaded bundle: checked inputs, the out-of-domain policy, counters.

``run(x)`` takes one input shaped like the model input or a batch
``(n, *sample_shape)`` and returns the output (float32).  Before the library
runs, the input must be float32/float64 of the right shape without NaN/Inf,
and each row is compared with the domain: ``reject`` raises ``OutOfDomain``,
``clamp`` projects the row into the domain, ``flag`` runs it as is and
reports it (``run_detailed``).  Every call is counted (``stats()``).

Gate firings: a gated bundle's library returns the ungated output too; a
row fired a gate when the two differ (``gate_fired``), and
``gate_fired_by_output`` counts, per output element, the rows a gate changed.
Libraries with a batch axis count these themselves (manifest ``gates.counts``)
and ``run`` reads their counts; ``run_detailed`` compares the two outputs.

Proved-safe regions: a bundle compiled with ``--regions`` carries the boxes
``relugate characterize`` proved safe for the original network;
``run_detailed`` (not the lean ``run``) marks the rows inside one
(``in_safe_region``) and counts them, and the gate firings among them
(``gate_fired_in_safe_region``: only a gate's margin ``delta`` at the unsafe
boundary can make that non-zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from relugate.runtime.checks import check_batch, check_finite, domain_bounds, outside_domain
from relugate.runtime.errors import BadInput, OutOfDomain
from relugate.runtime.executor import Executor
from relugate.runtime.regions import SafeRegions
from relugate.runtime.telemetry import CallCounts, Telemetry

SMALL = 32
"""Inputs of at most this many values are checked in Python, not numpy."""
SMALL_OUTPUT = 256
"""Outputs of at most this many values are compared as bytes (a numpy comparison and
``any`` cost about 1 us each, more than a small ACAS Xu kernel's share of a gate)."""


def _changed(gated: np.ndarray, ungated: np.ndarray, n: int) -> tuple[int, dict[int, int]]:
    """Rows where a gate changed the output, and per output element how many rows."""
    if gated.size <= SMALL_OUTPUT:
        a, b = gated.ravel().tolist(), ungated.ravel().tolist()
        k = len(a) // n
        moved = [i for i in range(len(a)) if a[i] != b[i]]
        by_output: dict[int, int] = {}
        for i in moved:
            by_output[i % k] = by_output.get(i % k, 0) + 1
        return len({i // k for i in moved}), by_output
    fired, counts = _fired(gated, ungated, n)
    return int(np.count_nonzero(fired)), {int(j): int(counts[j]) for j in np.flatnonzero(counts)}


def _fired(gated: np.ndarray, ungated: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, did a gate change it; per output element, in how many rows.

    numpy's bool reductions along a short axis are slow (25-30 us for 1024 x 5); two
    float32 matrix-vector products count the same (exactly, below 2**24 rows) in ~1/4."""
    changed = (gated.reshape(n, -1) != ungated.reshape(n, -1)).astype(np.float32)
    per_row = changed @ np.ones(changed.shape[1], np.float32)
    per_output = np.ones(n, np.float32) @ changed
    return per_row > 0, per_output.astype(np.int64)


def _same(gated: np.ndarray, ungated: np.ndarray) -> bool:
    """True when no gate changed any value.  Equal bytes mean equal values; unequal bytes
    with equal values (0.0 and -0.0) answer False and the caller recounts exactly."""
    if gated.size <= SMALL_OUTPUT:
        return gated.tobytes() == ungated.tobytes()
    return not (gated != ungated).any()


@dataclass
class RunResult:
    output: np.ndarray
    out_of_domain: np.ndarray  # bool per input row (before clamping)
    gate_fired: np.ndarray  # bool per input row; all False without gates
    in_safe_region: np.ndarray | None = None  # bool per row; None without regions


class Model:
    def __init__(
        self,
        manifest: dict[str, Any],
        executor: Executor,
        path: str = "",
        regions: SafeRegions | None = None,
    ) -> None:
        self.manifest = manifest
        self.regions = regions
        self.path = path
        self.executor = executor
        spec = manifest["input"]
        self.input_name: str = spec["name"]
        self.sample_shape = tuple(spec["sample_shape"])
        self.has_batch: bool = spec["has_batch"]
        self.input_shape = (1, *self.sample_shape) if self.has_batch else self.sample_shape
        out = manifest["outputs"][0]
        self.output_name: str = out["name"]
        self.output_sample_shape = tuple(out["sample_shape"])
        self.policy: str = manifest["policy"]
        domain = manifest.get("domain")
        self.domain = None if domain is None else domain_bounds(domain["lo"], domain["hi"])
        self._box = None
        self._bounds: list[tuple[float, float]] | None = None
        self._tiles: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.domain is not None:  # shaped like a sample: compares without a reshape
            self._box = tuple(b.reshape(self.sample_shape) for b in self.domain)
            self._bounds = list(zip(*(b.tolist() for b in self.domain), strict=True))
        self.gated = manifest["gates"]["ungated_output"] is not None
        n_out = int(np.prod(self.output_sample_shape))
        self.telemetry = Telemetry(n_out)

    def __repr__(self) -> str:
        t = self.manifest["target"]
        return (
            f"<relugate model {self.path!r}: {self.input_name}{list(self.input_shape)} -> "
            f"{self.output_name}{list(self.output_sample_shape)}, {t['name']} ({t['mcpu']}), "
            f"policy {self.policy}>"
        )

    # -- calls --------------------------------------------------------------
    def run(self, x: object) -> np.ndarray:
        """The model output for ``x`` (one input, or a batch along axis 0).

        Fast path, for a float32 C-contiguous batch whose rows all lie in the
        domain (and are finite): a handful of numpy calls around the library
        call, and gate firings counted from the two outputs it returned (small
        outputs in Python, large ones in numpy).  Anything else takes
        ``run_detailed``.
        """
        if self._plain(x):
            batch: np.ndarray = x  # type: ignore[assignment]
            if self._all_inside(batch):
                outputs = self.executor.run_all(batch)
                n = len(batch)
                if len(outputs) > 2:  # the library counted the firings
                    self._record_counts(n, outputs[2])
                elif not self.gated or _same(outputs[0], outputs[1]):
                    self.telemetry.record_clean(n)
                else:
                    self.telemetry.record_gates(n, *_changed(outputs[0], outputs[1], n))
                out = outputs[0]
                if out.shape[1:] != self.output_sample_shape:
                    out = out.reshape(n, *self.output_sample_shape)
                return out
        return self.run_detailed(x).output

    def _record_counts(self, n: int, counts: np.ndarray) -> None:
        """``counts`` (2, *output sample): per element, then in all (every element), the
        inputs of this call no gate changed (``item``: a third of ``.flat[0]``'s cost)."""
        fired = n - int(counts.item(counts.size // 2))
        if fired:
            self.telemetry.record_counted(n, fired, n - counts[0])
        else:
            self.telemetry.record_clean(n)

    def _plain(self, x: object) -> bool:
        return (
            type(x) is np.ndarray
            and x.dtype == np.float32
            and self.has_batch
            and x.shape[1:] == self.sample_shape
            and len(x) > 0
            and x.flags.c_contiguous
        )

    def _all_inside(self, batch: np.ndarray) -> bool:
        """Small batches compare in Python (a numpy call costs about a microsecond, four
        of them cost more than the ACAS Xu kernel); large ones with count_nonzero
        (``ndarray.all`` costs twice a comparison on small arrays)."""
        size = batch.size
        if size <= SMALL:
            values = batch.ravel().tolist()
            if self._bounds is None:
                return all(map(math.isfinite, values))
            bounds = self._bounds * len(batch)  # NaN fails every comparison
            return all(lo <= v <= hi for v, (lo, hi) in zip(values, bounds, strict=True))
        if self._box is None:
            return int(np.count_nonzero(np.isfinite(batch))) == size
        lo, hi = self._box  # NaN compares false: such rows leave the fast path
        if lo.size >= 64:  # wide rows: columnwise min and max, two passes (NaN propagates)
            return bool((batch.min(axis=0) >= lo).all() and (batch.max(axis=0) <= hi).all())
        lo, hi = self._tiled(len(batch))  # broadcasting over a short axis is slow: go flat
        flat = batch.reshape(-1)
        at_least_lo = int(np.count_nonzero(flat >= lo))
        return at_least_lo == size and int(np.count_nonzero(flat <= hi)) == size

    def _tiled(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The domain bounds repeated for a batch of ``n`` (a few batch sizes kept)."""
        tiles = self._tiles.get(n)
        if tiles is None:
            lo, hi = self.domain or (np.zeros(0), np.zeros(0))
            tiles = (np.tile(lo, n), np.tile(hi, n))
            if len(self._tiles) >= 4:
                self._tiles.clear()
            self._tiles[n] = tiles
        return tiles

    def run_detailed(self, x: object) -> RunResult:
        """Output plus, per input row, whether it was out of domain and fired a gate."""
        counts = CallCounts()
        try:
            result, single = self._run(x, counts)
        except OutOfDomain:
            self.telemetry.record(counts)
            raise
        except BadInput:
            counts.bad_inputs += 1
            self.telemetry.record(counts)
            raise
        self.telemetry.record(counts)
        if single and not self.has_batch:
            result.output = result.output[0]
        return result

    def _run(self, x: object, counts: CallCounts) -> tuple[RunResult, bool]:
        batch, single = check_batch(
            x, self.input_shape, self.has_batch, self.input_name, finite=self.domain is None
        )
        n = len(batch)
        outside = self._apply_domain(batch, counts)
        if outside is not None and self.policy == "clamp":
            lo, hi = self.domain or (None, None)
            batch = np.clip(batch.reshape(n, -1), lo, hi).reshape(batch.shape)
        outputs = self.executor.run_all(batch)
        output = outputs[0].reshape(n, *self.output_sample_shape)
        fired = np.zeros(n, dtype=bool)
        if self.gated:
            fired, counts.gate_fired_by_output = _fired(outputs[0], outputs[1], n)
            counts.gate_fired = int(fired.sum())
        counts.inputs = n
        no_rows = np.zeros(n, dtype=bool)
        safe = None
        if self.regions is not None:
            safe = self.regions.contains(batch.reshape(n, -1))
            counts.region_checked = n
            counts.in_safe_region = int(safe.sum())
            counts.gate_fired_in_safe_region = int((safe & fired).sum())
        outside = no_rows if outside is None else outside
        return RunResult(output, outside, fired, safe), single

    def _apply_domain(self, batch: np.ndarray, counts: CallCounts) -> np.ndarray | None:
        """Rows outside the domain (None when all are inside); enforces ``reject``."""
        if self.domain is None:
            return None
        flat = batch.reshape(len(batch), -1)
        outside = outside_domain(flat, *self.domain)
        if not outside.any():
            return None
        check_finite(flat, self.input_name, rows=outside)  # NaN/Inf: bad input, not a policy case
        k = int(outside.sum())
        counts.out_of_domain = k
        if self.policy == "reject":
            counts.rejected = k
            row = int(np.flatnonzero(outside)[0])
            lo, hi = self.domain
            col = int(np.flatnonzero((flat[row] < lo) | (flat[row] > hi))[0])
            raise OutOfDomain(
                f"{k} of {len(batch)} input(s) outside the domain (policy reject): row {row}, "
                f"element {col} = {float(flat[row, col])!r} not in "
                f"[{float(lo[col])!r}, {float(hi[col])!r}]"
            )
        if self.policy == "clamp":
            counts.clamped = k
        else:
            counts.flagged = k
        return outside

    # -- counters -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since load (or the last ``reset_stats``)."""
        return self.telemetry.snapshot()

    def reset_stats(self) -> None:
        self.telemetry.reset()
