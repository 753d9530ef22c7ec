"""``relugate compile --report --require`` run as a CI/CD pipeline step would: every exit
code reached on purpose-made inputs, every report validated against the shipped schema."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import jsonschema
import onnx
import pytest
from cli_helpers import (
    assert_no_traceback,
    hidden_leftovers,
    invoke,
    run_exe,
    says,
    unsupported_model,
)
from conftest import ROOT, save_model
from pipeline_helpers import (
    MODEL,
    SPEC,
    covering_spec,
    read_report,
    validate,
    validate_bundle_report,
    violated_spec,
)

from relugate.compiler import atomic, cli, errors
from relugate.compiler import compile as compile_mod
from relugate.compiler.pipeline import pass_names


def compile_step(tmp_path: Path, *args: str | Path, out: str = "out") -> tuple[int, dict, str, str]:
    """``relugate compile MODEL ... --report`` in-process: exit code, report, stdout, stderr."""
    report = tmp_path / "reports" / "compile.json"
    report.unlink(missing_ok=True)
    result = invoke("compile", *args, "-o", tmp_path / out, "--target", "none", "--report", report)
    assert_no_traceback(result.stderr)
    return result.exit_code, read_report(report), result.stdout, result.stderr


def test_exit_0_proved(tmp_path: Path) -> None:
    code, report, stdout, _ = compile_step(tmp_path, MODEL, "--spec", SPEC)
    assert code == 0 and report["status"] == "ok" and report["error"] is None
    assert report["stage"] == "done"
    guarantee = report["guarantee"]
    assert guarantee["require"] == "repair" and guarantee["status"] == "proved" and guarantee["met"]
    [prop] = guarantee["properties"]
    assert (prop["verdict"], prop["core_verdict"], prop["gated"]) == ("holds", "holds", False)
    summary = report["summary"]
    assert summary["relus_removed"] == summary["relus_before"] - summary["relus_after"] > 0
    assert summary["gates"] == 0 and summary["fidelity_same_argmax"] == 1.0
    timings = report["timings"]
    assert list(timings["passes"]) == pass_names()
    assert {"load", "spec", "passes", "check", "gates", "library", "write"} <= set(
        timings["stages"]
    )
    assert timings["total"] >= timings["stages"]["passes"]
    assert report["bundle"]["files"] == ["certificate.json", "model.onnx", "report.json"]
    bundle_report = json.loads((tmp_path / "out" / "report.json").read_text())
    validate_bundle_report(bundle_report)
    assert bundle_report["guarantee"] == guarantee == report["compile"]["guarantee"]
    # the human summary, at the end of stdout
    tail = stdout.strip().splitlines()[-6:]  # head, require, property, ReLUs, fidelity, time
    assert tail[0] == "relugate: collision.onnx: ok (exit 0)" and tail[-1].startswith("  time ")
    assert says(stdout, "require repair: met (proved)", "holds (crown) -> proved")
    assert says(stdout, f"ReLUs {summary['relus_before']} -> {summary['relus_after']}")
    assert says(stdout, "gates 0", "fidelity (same argmax): 100.00%")
    assert hidden_leftovers(tmp_path / "reports") == []


def test_exit_0_repaired_by_a_gate(tmp_path: Path) -> None:
    spec = violated_spec(tmp_path / "violated.vnnlib")
    code, report, stdout, _ = compile_step(tmp_path, MODEL, "--spec", spec)
    assert code == 0
    guarantee = report["guarantee"]
    assert (guarantee["status"], guarantee["met"]) == ("repaired", True)
    [prop] = guarantee["properties"]
    assert (prop["verdict"], prop["gated"], prop["status"]) == ("violated", True, "repaired")
    assert report["summary"]["gates"] >= 1
    assert report["summary"]["fidelity_safe_same_argmax"] == 1.0
    assert says(stdout, "violated (sampling) -> repaired, gated")


def test_exit_4_require_proof_refuses_a_gate(tmp_path: Path) -> None:
    spec = violated_spec(tmp_path / "violated.vnnlib")
    code, report, _, stderr = compile_step(tmp_path, MODEL, "--spec", spec, "--require", "proof")
    assert code == 4 and report["exit_code"] == 4 and report["status"] == "failed"
    assert report["error"]["kind"] == "not guaranteed"
    assert says(report["error"]["message"], "property could not be guaranteed", "violated")
    assert says(stderr, "error (not guaranteed)", "--require proof")
    assert report["stage"] == "gates" and report["bundle"] is None and report["compile"] is None
    guarantee = report["guarantee"]
    assert guarantee["require"] == "proof" and not guarantee["met"]
    assert guarantee["properties"][0]["verdict"] == "violated"
    summary = report["summary"]  # what was known when it stopped
    assert summary["relus_after"] is not None and summary["max_relative_error"] is not None
    assert summary["gates"] >= 1  # the gates it would have needed
    assert not (tmp_path / "out").exists()


def test_require_proof_passes_when_every_property_holds(tmp_path: Path) -> None:
    code, report, _, _ = compile_step(tmp_path, MODEL, "--spec", SPEC, "--require", "proof")
    assert code == 0 and report["guarantee"]["met"]


def test_exit_4_unrepairable_and_require_none(tmp_path: Path) -> None:
    spec = covering_spec(tmp_path / "covering.vnnlib")
    code, report, _, stderr = compile_step(tmp_path, MODEL, "--spec", spec)
    assert code == 4 and report["error"]["type"] == "ProofFailed"
    assert says(stderr, "property could not be guaranteed", "covering.vnnlib")
    assert report["guarantee"]["status"] == "not guaranteed"
    assert not (tmp_path / "out").exists()
    # --require none: the model ships ungated, and the report says nothing is guaranteed
    code, report, stdout, _ = compile_step(tmp_path, MODEL, "--spec", spec, "--require", "none")
    assert code == 0
    guarantee = report["guarantee"]
    assert (guarantee["status"], guarantee["met"]) == ("not guaranteed", True)
    assert says(guarantee["message"], "covering.vnnlib")
    assert guarantee["properties"][0]["status"] == "not guaranteed"
    assert guarantee["properties"][0]["verdict"] == "violated"  # every output is unsafe
    assert not (tmp_path / "out" / "certificate.json").exists()
    shipped = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert not any(n.name.startswith("relugate_gate") for n in shipped.graph.node)
    assert says(stdout, "require none: met (not guaranteed)")


def test_no_gates_means_require_none(tmp_path: Path) -> None:
    code, report, _, _ = compile_step(tmp_path, MODEL, "--spec", SPEC, "--no-gates")
    assert code == 0
    guarantee = report["guarantee"]
    assert (guarantee["require"], guarantee["status"]) == ("none", "not checked")
    assert report["summary"]["gates"] is None


def test_no_properties(tmp_path: Path) -> None:
    box = ["--input-box", "0,100", "--input-box", "-10,30", "--input-box", "0,40"]
    code, report, _, _ = compile_step(tmp_path, MODEL, *box, "--require", "proof")
    assert code == 0 and report["guarantee"]["status"] == "no properties"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--require", "bogus"], "--require must be one of proof, repair, none"),
        (["--no-gates", "--require", "proof"], "--no-gates skips verification"),
        (["--no-gates", "--require", "repair"], "--require repair cannot be met"),
    ],
)
def test_exit_2_usage(tmp_path: Path, args: list[str], needle: str) -> None:
    code, report, _, stderr = compile_step(tmp_path, MODEL, "--spec", SPEC, *args)
    assert code == 2 and report["error"]["kind"] == "usage error"
    assert says(report["error"]["message"], needle) and says(stderr, needle)
    assert report["summary"] is None and report["guarantee"] is None


def test_exit_2_from_the_parser_writes_no_report(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = invoke("compile", MODEL, "-o", tmp_path / "o", "--report", report, "--no-such-opt")
    assert result.exit_code == 2 and not report.exists()


def test_exit_3_bad_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (>= X_0 ")
    code, report, _, stderr = compile_step(tmp_path, MODEL, "--spec", bad)
    assert code == 3 and report["error"]["kind"] == "bad spec" and report["stage"] == "spec"
    assert says(report["error"]["message"], "bad.vnnlib") and says(stderr, "error (bad spec)")
    assert report["summary"]["relus_before"] > 0 and report["summary"]["relus_after"] is None


def test_exit_3_bad_model(tmp_path: Path) -> None:
    model = save_model(unsupported_model(), tmp_path / "unsup.onnx")
    code, report, _, _ = compile_step(tmp_path, model, "--input-box", "0,1")
    assert code == 3 and report["error"]["kind"] == "unsupported model"
    assert report["stage"] == "load" and report["summary"] is None
    assert says(report["error"]["message"], "'sig' (Sigmoid)")


def test_exit_5_output_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    code, report, _, stderr = compile_step(tmp_path, MODEL, "--spec", SPEC)
    assert code == 5 and report["error"]["kind"] == "bundle error" and report["stage"] == "output"
    assert says(stderr, "exists and is not a folder")
    assert (tmp_path / "out").read_text() == "not a folder"


def test_exit_5_report_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = invoke(
        "compile", MODEL, "--spec", SPEC, "-o", tmp_path / "o", "--target", "none",
        "--report", tmp_path / "file" / "report.json",
    )  # fmt: skip
    assert result.exit_code == 5 and says(result.stderr, "cannot write the report")


def test_exit_70_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the check fell over")

    monkeypatch.setattr(compile_mod, "check_against_original", broken)
    code, report, _, stderr = compile_step(tmp_path, MODEL, "--spec", SPEC)
    assert code == 70 and report["exit_code"] == 70
    assert report["error"] == {
        "kind": "internal error",
        "type": "RuntimeError",
        "message": "the check fell over",
    }
    assert report["stage"] == "check"
    assert says(stderr, "internal error", "RuntimeError: the check fell over", "--debug")
    assert not (tmp_path / "out").exists()


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report write that fails halfway (disk full) leaves the previous report whole."""
    code, first, _, _ = compile_step(tmp_path, MODEL, "--spec", SPEC)
    assert code == 0
    path = tmp_path / "reports" / "compile.json"
    before = path.read_text()
    real = atomic.write_json

    def half_then_full(target: Path, data: object) -> None:
        real(target, data)
        target.write_text(target.read_text()[:50])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_json", half_then_full)
    result = invoke(
        "compile", MODEL, "--spec", SPEC, "-o", tmp_path / "again", "--target", "none",
        "--report", path,
    )  # fmt: skip
    assert result.exit_code == 5 and says(result.stderr, "cannot write the report", "No space")
    assert path.read_text() == before and json.loads(before) == first
    assert hidden_leftovers(tmp_path / "reports") == []


def test_schema_rejects_inconsistent_reports(tmp_path: Path) -> None:
    """The schema is not a rubber stamp: a report saying ok with an error fails it."""
    _, report, _, _ = compile_step(tmp_path, MODEL, "--spec", SPEC)
    broken = {**report, "exit_code": 4}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = {**report, "guarantee": {**report["guarantee"], "status": "probably"}}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = {k: v for k, v in report.items() if k != "timings"}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_as_a_pipeline_step_with_the_installed_script(tmp_path: Path) -> None:
    """What a CI job runs: the console script, its exit code, then the report file."""
    spec = violated_spec(tmp_path / "violated.vnnlib")
    ok = run_exe(
        "compile", MODEL, "--spec", SPEC, "-o", tmp_path / "ok", "--target", "none",
        "--report", tmp_path / "ok.json",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert read_report(tmp_path / "ok.json")["guarantee"]["met"]
    strict = run_exe(
        "compile", MODEL, "--spec", spec, "-o", tmp_path / "strict", "--target", "none",
        "--require", "proof", "--report", tmp_path / "strict.json",
    )  # fmt: skip
    assert strict.returncode == 4
    assert_no_traceback(strict.stderr)
    report = read_report(tmp_path / "strict.json")
    assert report["exit_code"] == 4 and report["error"]["kind"] == "not guaranteed"
    assert "relugate: collision.onnx: failed (exit 4)" in strict.stdout


def test_exit_codes_documented_and_stable() -> None:
    """Every error class maps to a documented code; README and cli.py list the same codes."""
    documented = {0, 2, 3, 4, 5, 70}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes") : readme.index("### Pipeline use")]
    assert {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)} == documented
    assert {int(c) for c in re.findall(r"^(\d+) ", cli.__doc__ or "", re.M)} == documented

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    codes = {cls.__name__: cls.exit_code for cls in subclasses(errors.RelugateError)}
    assert set(codes.values()) <= documented - {0}, codes
    assert (codes["UsageError"], codes["BadSpec"], codes["ConfigError"]) == (2, 3, 3)
    assert (codes["ProofFailed"], codes["BundleError"]) == (4, 5)
    assert errors.INTERNAL_ERROR_EXIT == 70
