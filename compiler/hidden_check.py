"""``relugate check`` for a hidden-layer gate: re-derive and re-prove it from the bundle.

From the certificate's ``hidden_gate`` (layer, tensor, region, per-case reach
boxes) and the stripped core alone: the cut must exist at that layer with that
tensor; the clamp in ``model.onnx`` must be the one ``append_clamp`` builds from
the region, node for node and constant for constant; CROWN on the core must
put the layer inside the certificate's reach box on every case; and the tail
network must be verified again (``verify_model``) on every case from the reach
box clipped to the region.  A model with clamp nodes but no hidden gate in its
certificate is refused too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.errors import BundleError, ProofFailed
from relugate.compiler.hidden_onnx import append_clamp, clamp_part, find_cut, tail_model
from relugate.compiler.spec import Property
from relugate.passes.analysis.hidden_proof import Range, clip_box, prove_tail

Say = Callable[[str], None]


def _serialized(part: tuple[list[Any], list[Any]]) -> list[bytes]:
    return [x.SerializeToString() for x in [*part[0], *part[1]]]


def _reach(data: dict[str, Any]) -> list[list[Range]]:
    return [
        [(np.array(r["lo"], dtype=np.float64), np.array(r["hi"], dtype=np.float64)) for r in per]
        for per in data["reach"]
    ]


def _check_reach(
    core_path: Path,
    core: onnx.ModelProto,
    layer: int,
    props: Sequence[Property],
    reach: list[list[Range]],
) -> None:
    from relugate.passes.insert_hidden import reach_boxes  # imports verify, which imports us

    cut = find_cut(core, layer)
    fresh = reach_boxes(core_path, core, cut, props, slack=False)
    for prop, mine, theirs in zip(props, fresh, reach, strict=True):
        for c, ((lo, hi), (clo, chi)) in enumerate(zip(mine, theirs, strict=True)):
            if not (np.all(lo >= clo) and np.all(hi <= chi)):
                raise BundleError(
                    f"{prop.source} case {c + 1}: CROWN bounds of hidden layer {layer} on the "
                    "core are not inside the certificate's"
                )


def check_hidden(
    cert: dict[str, Any],
    model: onnx.ModelProto,
    core: onnx.ModelProto,
    core_path: Path,
    props: Sequence[Property],
    timeout: float,
    say: Say,
) -> int:
    """Re-check the hidden gate; the number of cases proved (0: there is none)."""
    data = cert.get("hidden_gate")
    if data is None:
        if clamp_part(model)[0]:
            raise BundleError("model.onnx clamps a hidden layer but the certificate has no gate")
        return 0
    cut = find_cut(core, int(data["layer"]))
    if cut.tensor != data["tensor"]:
        raise BundleError(f"hidden layer {cut.index} is {cut.tensor!r}, not {data['tensor']!r}")
    lo = np.array(data["region"]["lo"], dtype=np.float64)
    hi = np.array(data["region"]["hi"], dtype=np.float64)
    if not all(np.array_equal(v.astype(np.float32).astype(np.float64), v) for v in (lo, hi)):
        raise BundleError("the certificate's hidden gate region is not float32 values")
    expected = append_clamp(core, cut, lo, hi)
    if _serialized(clamp_part(expected)) != _serialized(clamp_part(model)):
        raise BundleError("the hidden gate in model.onnx differs from the certificate's region")
    reach = _reach(data)
    _check_reach(core_path, core, cut.index, props, reach)
    say(f"hidden gate at layer {cut.index} ({cut.tensor}): clamp and CROWN boxes match")
    boxes = [[clip_box(r, lo, hi) for r in per] for per in reach]
    proofs = prove_tail(tail_model(core, cut), boxes, props, timeout, stop_early=False)
    failed = [p for p in proofs if not p.proved]
    if failed:
        f = failed[0]
        raise ProofFailed(
            f"{props[f.prop].source} case {f.case + 1}: the network after hidden layer "
            f"{cut.index} is not proved safe from the clamped region ({f.verdict}, {f.method})"
        )
    say(f"tail network: {len(proofs)} cases proved again ({', '.join(p.method for p in proofs)})")
    return len(proofs)
