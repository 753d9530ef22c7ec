"""``--require proof|repair|none``: what a compile must guarantee about its properties.

- ``proof``: every property holds on the original and on the compiled network,
  proved; a gate is not enough (exit 4 otherwise).
- ``repair`` (the default): every property is proved, or repaired by output
  gates that are themselves proved (exit 4 when a gate cannot be proved).
- ``none``: compile even when nothing can be guaranteed; the report says so.
  A property whose gates cannot be proved leaves the model ungated (and the
  report gives each property's verdict on the original, verified again).

``--no-gates`` skips verification altogether, so it goes only with ``none``
(the level it implies when ``--require`` is not given).

The report's ``guarantee`` entry: the level asked for, the overall status
(``proved``, ``repaired``, ``not guaranteed``, ``not checked``, ``no properties``),
whether the level was met, and per property its verdict and status.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relugate.compiler.errors import ProofFailed, UsageError
from relugate.compiler.spec import Property

if TYPE_CHECKING:
    from relugate.compiler.certificate import Gating

LEVELS = ("proof", "repair", "none")
NOT_GUARANTEED = "property could not be guaranteed"


def resolve_require(require: str | None, gates: bool) -> str:
    """The level to enforce: ``require`` checked against ``gates`` (None: the default)."""
    if require is None:
        return "repair" if gates else "none"
    if require not in LEVELS:
        raise UsageError(f"--require must be one of {', '.join(LEVELS)}, not {require!r}")
    if not gates and require != "none":
        raise UsageError(
            f"--no-gates skips verification, so --require {require} cannot be met; "
            "use --require none or drop --no-gates"
        )
    return require


def _property_status(verdict: dict[str, Any]) -> str:
    return "repaired" if verdict["gated"] else "proved"


def _rows(gating: Gating) -> list[dict[str, Any]]:
    rows = []
    for v in gating.report["verdict_original"]:
        rows.append(
            {
                "source": v["source"],
                "verdict": v["verdict"],
                "method": v.get("method"),
                "core_verdict": None if v["core"] is None else v["core"]["verdict"],
                "gated": v["gated"],
                "status": _property_status(v),
            }
        )
    return rows


def _unchecked(
    props: Sequence[Property], status: str, verdicts: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    known = list(verdicts) if verdicts is not None else [{}] * len(props)
    return [
        {
            "source": p.source,
            "verdict": v.get("verdict"),
            "method": v.get("method"),
            "core_verdict": None,
            "gated": False,
            "status": status,
        }
        for p, v in zip(props, known, strict=True)
    ]


def original_verdicts(
    original: Path, specs: Sequence[Path], timeout: float
) -> list[dict[str, Any]]:
    """Verdict and method of each spec on the original model (``relugate verify``): what
    the report of a ``--require none`` compile says when no gate could be proved."""
    from relugate.compiler.verify import verify_model  # verify imports compile, which imports us

    results = [verify_model(original, [spec], timeout=timeout) for spec in specs]
    return [{"verdict": r.verdict, "method": r.method} for r in results]


def guarantee_json(
    require: str,
    props: Sequence[Property],
    gating: Gating | None,
    failure: ProofFailed | None = None,
    verdicts: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report's ``guarantee`` entry for a compile that got this far (``verdicts``: on
    the original, when known although the gates failed)."""
    message = None
    if not props:
        status, rows = "no properties", []
    elif failure is not None:
        status, message = "not guaranteed", str(failure)
        rows = _unchecked(props, status, verdicts)
    elif gating is None:
        status, rows = "not checked", _unchecked(props, "not checked")
    else:
        rows = _rows(gating)
        status = "repaired" if any(r["gated"] for r in rows) else "proved"
    met = {
        "proof": status in ("proved", "no properties"),
        "repair": status in ("proved", "repaired", "no properties"),
        "none": True,
    }[require]
    return {
        "require": require,
        "status": status,
        "met": met,
        "message": message,
        "properties": rows,
    }


def enforce_proof(gating: Gating) -> None:
    """``--require proof``: fail unless no property needed a gate."""
    failing = [v for v in gating.report["verdict_original"] if v["gated"]]
    if not failing:
        return
    parts = []
    for v in failing:
        if v["verdict"] != "holds":
            parts.append(f"{v['source']} is {v['verdict']} on the original")
        else:
            core = (v["core"] or {}).get("verdict", "not verified")
            parts.append(f"{v['source']} holds on the original but is {core} on the compiled model")
    raise ProofFailed(
        f"{NOT_GUARANTEED} by proof (--require proof): {'; '.join(parts)}. "
        "A proved output gate could repair it (--require repair). Nothing was written."
    )


def proof_failure(require: str, exc: ProofFailed) -> ProofFailed:
    """The error to raise when the gates could not be proved under ``require``."""
    how = "by proof (--require proof)" if require == "proof" else "(--require repair)"
    return ProofFailed(f"{NOT_GUARANTEED} {how}: {exc}")
