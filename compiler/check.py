"""``relugate check BUNDLE``: re-verify a gated compile from its certificate alone.

Independently of the compile that wrote it:
1. hashes: ``model.onnx`` against the certificate; the input model and the spec
   files where they still exist at the recorded paths; each embedded spec text;
2. the ungated core (gate nodes stripped, ``<out>_ungated`` reconnected): CROWN
   on every case box must land inside the certificate's output ranges;
3. the gates are re-derived from the properties, the gated flags and those
   ranges, and must equal the certificate's; the ONNX gate subgraph built
   from them must equal the one in ``model.onnx`` node for node, constant for
   constant;
4. the z3 proof of every case is run again;
5. a hidden gate (``check_hidden``): its clamp must equal the certificate's region
   at the certificate's layer, the core's CROWN box of that layer on every case
   must lie inside the certificate's, and the tail network is verified again on
   every case from the clipped box;
6. each property that holds without gates is verified again on the core.
Any mismatch raises ``BundleError`` (exit 5); a failed proof ``ProofFailed`` (4).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from relugate.compiler.certificate import FORMAT, sha256_bytes, sha256_file
from relugate.compiler.domain import Box
from relugate.compiler.errors import BundleError, ProofFailed
from relugate.compiler.gates_onnx import append_gates, gate_part, strip_gates
from relugate.compiler.hidden_check import check_hidden
from relugate.compiler.spec import Property, parse_vnnlib
from relugate.compiler.verify import verify_model
from relugate.passes.analysis.gate_design import GateSpec, design_gates
from relugate.passes.insert_gates import Range, output_ranges, prove_all

Say = Callable[[str], None]


def _load(bundle: Path) -> tuple[dict[str, Any], bytes]:
    try:
        cert = json.loads((bundle / "certificate.json").read_text())
        data = (bundle / "model.onnx").read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(
            f"{bundle}: not a gated bundle ({Path(exc.filename).name} missing)"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle}: cannot read the bundle ({exc})") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise BundleError(f"{bundle}/certificate.json: not a {FORMAT} certificate")
    return cert, data


def _hashes(cert: dict[str, Any], data: bytes, say: Say) -> None:
    if sha256_bytes(data) != cert["output_model"]["sha256"]:
        raise BundleError("model.onnx does not match the certificate's sha256 (modified?)")
    say("model.onnx sha256 matches")
    source = Path(cert["input_model"]["path"])
    if source.is_file():
        if sha256_file(source) != cert["input_model"]["sha256"]:
            raise BundleError(f"the input model {source} changed since the compile (sha256)")
        say(f"input model sha256 matches ({source})")
    else:
        say(f"input model {source} not found: its hash is not re-checked")
    for prop in cert["properties"]:
        if sha256_bytes(prop["text"].encode()) != prop["text_sha256"]:
            raise BundleError(f"the embedded text of {prop['source']} does not match its sha256")
        spec = Path(prop.get("path", prop["source"]))
        if spec.is_file() and sha256_file(spec) != prop["sha256"]:
            raise BundleError(f"the spec {spec} changed since the compile (sha256)")


def _properties(cert: dict[str, Any]) -> list[Property]:
    props = [parse_vnnlib(p["text"], p["source"]) for p in cert["properties"]]
    for prop, data in zip(props, cert["properties"], strict=True):
        boxes = [(c["box"]["lo"], c["box"]["hi"]) for c in data["cases"]]
        if boxes != [(c.box.lo.tolist(), c.box.hi.tolist()) for c in prop.cases]:
            raise BundleError(f"the case boxes of {prop.source} differ from its spec text")
    return props


def _ranges(cert: dict[str, Any]) -> list[list[Range]]:
    return [
        [
            (np.array(c["output_range"]["lo"]), np.array(c["output_range"]["hi"]))
            for c in prop["cases"]
        ]
        for prop in cert["properties"]
    ]


def _check_ranges(core_path: Path, props: list[Property], ranges: list[list[Range]]) -> None:
    fresh = output_ranges(core_path, props, slack=False)
    for prop, mine, theirs in zip(props, fresh, ranges, strict=True):
        for c, ((lo, hi), (clo, chi)) in enumerate(zip(mine, theirs, strict=True)):
            if not (np.all(lo >= clo) and np.all(hi <= chi)):
                raise BundleError(
                    f"{prop.source} case {c + 1}: the core's CROWN output range is not inside "
                    "the certificate's"
                )


def _check_gates(
    cert: dict[str, Any], props: list[Property], ranges: list[list[Range]]
) -> list[GateSpec]:
    gated = [bool(p["gated"]) for p in cert["properties"]]
    for prop, data in zip(props, cert["properties"], strict=True):
        holds = [
            (data.get(key) or {}).get("verdict") for key in ("verdict_original", "verdict_core")
        ]
        if not data["gated"] and holds != ["holds", "holds"]:
            raise BundleError(
                f"{prop.source} is not gated but the certificate does not say it holds"
            )
    if cert.get("hidden_gate") is not None:
        if cert["gates"]:
            raise BundleError("the certificate has a hidden gate and output gates")
        return []  # the hidden gate repairs every gated property (check_hidden)
    domain = cert["domain"]
    box = None if domain is None else Box(np.array(domain["lo"]), np.array(domain["hi"]))
    gates = design_gates(props, gated, ranges, box)
    if [g.to_json() for g in gates] != cert["gates"]:
        raise BundleError(
            "the certificate's gates differ from the ones re-derived from its properties"
        )
    return gates


def _check_nodes(model: onnx.ModelProto, core: onnx.ModelProto, gates: list[GateSpec]) -> None:
    expected = gate_part(append_gates(core, gates)) if gates else ([], [])
    found = gate_part(model)
    same_nodes = [n.SerializeToString() for n in expected[0]] == [
        n.SerializeToString() for n in found[0]
    ]
    same_consts = [i.SerializeToString() for i in expected[1]] == [
        i.SerializeToString() for i in found[1]
    ]
    if not (same_nodes and same_consts):
        raise BundleError("the gate nodes in model.onnx differ from the certificate's gates")


def _recheck_holds(
    core_path: Path, cert: dict[str, Any], timeout: float, tmp: Path, say: Say
) -> None:
    for i, data in enumerate(cert["properties"]):
        if data["gated"]:
            continue
        spec = tmp / f"spec{i}.vnnlib"
        spec.write_text(data["text"])
        result = verify_model(core_path, [spec], timeout=timeout)
        if result.verdict != "holds":
            raise ProofFailed(
                f"{data['source']}: the certificate says it holds without gates, but verification "
                f"of the core answers {result.verdict} ({result.method})"
            )
        say(f"{data['source']}: holds on the core ({result.method}, {result.seconds:.2f} s)")


def check_bundle(bundle: Path, timeout: float | None = None, say: Say = print) -> dict[str, Any]:
    """Re-verify ``bundle``; raises on any mismatch, returns a summary."""
    cert, data = _load(bundle)
    _hashes(cert, data, say)
    props = _properties(cert)
    ranges = _ranges(cert)
    model = onnx.load_from_string(data)
    core = strip_gates(model)
    with tempfile.TemporaryDirectory(prefix="relugate-check-") as tmp:
        core_path = Path(tmp) / "core.onnx"
        onnx.save(core, str(core_path))
        _check_ranges(core_path, props, ranges)
        say("output ranges: CROWN on the ungated core lies inside the certificate's")
        gates = _check_gates(cert, props, ranges)
        _check_nodes(model, core, gates)
        say(f"{len(gates)} output gates re-derived; the ONNX gate subgraph matches them")
        budget = timeout or float(cert["verify_timeout"])
        hidden = check_hidden(cert, model, core, core_path, props, budget, say)
        proofs = [] if hidden else prove_all(props, _gated(cert), ranges, gates)
        if not hidden:
            say(f"z3: {len(proofs)} cases proved again ({', '.join(p.status for p in proofs)})")
        _recheck_holds(core_path, cert, budget, Path(tmp), say)
    cases = hidden or len(proofs)
    return {"gates": len(gates) + bool(hidden), "cases": cases, "properties": len(props)}


def _gated(cert: dict[str, Any]) -> list[bool]:
    return [bool(p["gated"]) for p in cert["properties"]]
