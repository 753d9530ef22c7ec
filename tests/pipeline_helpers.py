"""Helpers for the pipeline tests (compile --report, build, the Python API): the report
schema validator and purpose-made specs for the shipped example model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from conftest import ROOT

from relugate.compiler.step_report import schema

MODEL = ROOT / "examples" / "collision.onnx"
SPEC = ROOT / "examples" / "collision.vnnlib"

_DECLARE = "\n".join(
    [f"(declare-const X_{i} Real)" for i in range(3)]
    + [f"(declare-const Y_{j} Real)" for j in range(3)]
)
# obstacle 5-60 m away, closing at 0-30 m/s: CLEAR is right far away, so "never CLEAR" fails
_BOX = """
(assert (>= X_0 5.0))
(assert (<= X_0 60.0))
(assert (>= X_1 0.0))
(assert (<= X_1 30.0))
(assert (>= X_2 10.0))
(assert (<= X_2 40.0))
"""


def violated_spec(path: Path) -> Path:
    """A property the example violates, that one proved gate repairs (CLEAR never top)."""
    path.write_text(_DECLARE + _BOX + "(assert (>= Y_0 Y_1))\n(assert (>= Y_0 Y_2))\n")
    return path


def covering_spec(path: Path) -> Path:
    """Unsafe sets covering every output (Y_0 >= Y_1 or Y_0 <= Y_1): no gate can be proved."""
    path.write_text(_DECLARE + _BOX + "(assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 Y_1))))\n")
    return path


def _validator(ref: str | None = None) -> jsonschema.protocols.Validator:
    root = schema()
    cls = jsonschema.validators.validator_for(root)
    cls.check_schema(root)
    target = root if ref is None else {"$ref": ref, "$defs": root["$defs"]}
    return cls(target)  # type: ignore[no-any-return]


def validate(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` checked against the shipped schema (pipeline or build report)."""
    _validator().validate(report)
    return report


def validate_bundle_report(report: dict[str, Any]) -> dict[str, Any]:
    """A bundle's ``report.json`` checked against ``$defs/bundle_report``."""
    _validator("#/$defs/bundle_report").validate(report)
    return report


def read_report(path: Path) -> dict[str, Any]:
    return validate(json.loads(path.read_text()))
