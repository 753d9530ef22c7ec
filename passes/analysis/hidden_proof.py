"""The proof of a hidden-layer gate: the tail network never reaches an unsafe set.

A hidden gate clamps the cut tensor ``h`` into ``H = [lo, hi]`` (float32 values;
Min/Max are exact, so the clamped ``h'`` lies in ``H`` bit for bit).  On case
``c`` of a property (input box ``X_c``) the unclamped ``h`` lies in ``R_c``, a
float32-sound CROWN box of the cut on ``X_c``; clamping is monotone per
coordinate, so ``h'`` lies in ``B_c = clip(R_c, lo, hi)``.  The gated network is
safe on case ``c`` when the tail (the network after the cut, run on ``h'``)
never reaches an unsafe polytope of ``c`` from ``B_c``: that is a VNN-LIB
property of the tail with input box ``B_c``, decided by ``verify_model`` (the
same sampling, CROWN, PGD, ReLU splitting and MILP as for any network, float32
margins included).  Only ``holds`` proves; anything else refuses the gate.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.errors import ProofFailed
from relugate.compiler.spec import Case, Polytope, Property

Range = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TailProof:
    prop: int
    case: int
    verdict: str  # verify_model on the tail: holds, violated, unknown
    method: str
    seconds: float

    @property
    def proved(self) -> bool:
        return self.verdict == "holds"

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.prop,
            "case": self.case,
            "verdict": self.verdict,
            "method": self.method,
            "seconds": round(self.seconds, 3),
        }


def clip_box(reach: Range, lo: np.ndarray, hi: np.ndarray) -> Range:
    """Where the clamp into ``[lo, hi]`` sends the box ``reach`` (exact: clamping is
    monotone per coordinate)."""
    return np.clip(reach[0], lo, hi), np.clip(reach[1], lo, hi)


def _number(x: float) -> str:
    text = repr(float(x))
    return f"(- {text[1:]})" if text.startswith("-") else text


def _row(a: np.ndarray, b: float) -> str:
    terms = [f"(* {_number(c)} Y_{j})" for j, c in enumerate(a) if c != 0.0]
    lhs = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"(<= {lhs} {_number(b)})"


def _polytope(poly: Polytope) -> str | None:
    """The polytope as a conjunction; None when it has no rows (every output unsafe)."""
    rows = [_row(a, b) for a, b in zip(poly.A, poly.b, strict=True) if np.any(a != 0.0)]
    if any(b < 0 for a, b in zip(poly.A, poly.b, strict=True) if not np.any(a != 0.0)):
        return "(<= 1.0 0.0)"  # a false row: the polytope is empty
    return None if not rows else f"(and {' '.join(rows)})"


def tail_spec(box: Range, case: Case, n_out: int, where: str) -> str:
    """VNN-LIB text: the tail's input in ``box``, its output in an unsafe set of ``case``."""
    lo, hi = box
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        lines += [f"(assert (>= X_{i} {_number(a)}))", f"(assert (<= X_{i} {_number(b)}))"]
    polys = [_polytope(p) for p in case.unsafe]
    if any(p is None for p in polys):
        raise ProofFailed(f"no hidden gate for {where}: an unsafe set covers every output")
    live = [p for p in polys if p is not None and p != "(<= 1.0 0.0)"]
    if not live:
        return ""  # nothing is unsafe: holds without a proof
    lines.append(f"(assert {live[0]})" if len(live) == 1 else f"(assert (or {' '.join(live)}))")
    return "\n".join(lines) + "\n"


def prove_tail(
    tail: onnx.ModelProto,
    boxes: Sequence[Sequence[Range]],
    props: Sequence[Property],
    timeout: float,
    stop_early: bool = True,
) -> list[TailProof]:
    """``verify_model`` on the tail for every case of every property (``boxes[p][c]``: the
    tail's input box ``B_c``).  Identical (box, case) pairs are decided once.  With
    ``stop_early`` the first case that does not hold ends the run."""
    n_out = props[0].n_outputs
    proofs: list[TailProof] = []
    seen: dict[str, TailProof] = {}
    with tempfile.TemporaryDirectory(prefix="relugate-tail-") as tmp:
        path = Path(tmp) / "tail.onnx"
        onnx.save(tail, str(path))
        for p, prop in enumerate(props):
            for c, case in enumerate(prop.cases):
                text = tail_spec(boxes[p][c], case, n_out, f"{prop.source} (case {c + 1})")
                if text in seen:
                    proofs.append(TailProof(p, c, *_again(seen[text])))
                    continue
                if not text:
                    proof = TailProof(p, c, "holds", "no-unsafe-set", 0.0)
                else:
                    spec = Path(tmp) / f"tail_{p}_{c}.vnnlib"
                    spec.write_text(text)
                    proof = _verify(path, spec, timeout, (p, c))
                seen[text] = proof
                proofs.append(proof)
                if stop_early and not proof.proved:
                    return proofs
    return proofs


def _verify(path: Path, spec: Path, timeout: float, where: tuple[int, int]) -> TailProof:
    """``verify_model`` on the tail; an exception inside the verifier is no proof (the
    gate is refused, as for ``unknown``), recorded with its message."""
    from relugate.compiler.verify import verify_model  # verify imports compile, which imports us

    start = time.perf_counter()
    try:
        result = verify_model(path, [spec], timeout=timeout)
    except (RuntimeError, ValueError, ArithmeticError) as exc:
        method = f"verifier error: {type(exc).__name__}: {exc}"[:200]
        return TailProof(*where, "unknown", method, time.perf_counter() - start)
    return TailProof(*where, result.verdict, result.method, result.seconds)


def _again(proof: TailProof) -> tuple[str, str, float]:
    return proof.verdict, proof.method, 0.0
