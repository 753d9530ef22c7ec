"""The Python API (``relugate.compile``, ``relugate.verify``, ``relugate.build``) and the
README's example of it, run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from pipeline_helpers import MODEL, SPEC, read_report, validate, violated_spec

import relugate
from relugate.compiler import compile as compile_mod
from relugate.compiler.errors import BadSpec, ProofFailed


def test_compile_result(tmp_path: Path) -> None:
    result = relugate.compile(MODEL, spec=SPEC, out=tmp_path / "b", target="none")
    assert isinstance(result, relugate.CompileOutcome)
    assert result.ok and result.exit_code == 0 and result.status == "ok" and result.guaranteed
    assert result.bundle == tmp_path / "b" and (result.bundle / "model.onnx").is_file()
    assert [(v["verdict"], v["status"]) for v in result.verdicts] == [("holds", "proved")]
    validate(result.report)
    assert result.report["request"]["target"] == "none"
    result.raise_for_status()  # nothing to raise


def test_compile_mirrors_the_cli_options(tmp_path: Path) -> None:
    spec = violated_spec(tmp_path / "v.vnnlib")
    repaired = relugate.compile(MODEL, spec=[spec], out=tmp_path / "r", target="none")
    assert repaired.ok and repaired.verdicts[0]["status"] == "repaired"
    strict = relugate.compile(MODEL, spec=spec, out=tmp_path / "s", target="none", require="proof")
    assert strict.exit_code == 4 and not strict.guaranteed and strict.bundle is None
    assert isinstance(strict.error, ProofFailed) and strict.status == "failed"
    with pytest.raises(ProofFailed, match="property could not be guaranteed"):
        strict.raise_for_status()
    validate(strict.report)
    with pytest.raises(TypeError, match="tuning"):
        relugate.compile(MODEL, spec=SPEC, out=tmp_path / "t", tuning=1)  # not an option


def test_compile_writes_the_report_on_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(assert")
    result = relugate.compile(MODEL, spec=bad, out=tmp_path / "b", report=tmp_path / "r.json")
    assert result.exit_code == 3 and isinstance(result.error, BadSpec)
    assert read_report(tmp_path / "r.json") == result.report
    assert not (tmp_path / "b").exists()


def test_internal_error_is_raised_after_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(compile_mod, "check_against_original", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        relugate.compile(MODEL, spec=SPEC, out=tmp_path / "b", report=tmp_path / "r.json")
    report = read_report(tmp_path / "r.json")
    assert report["exit_code"] == 70 and report["error"]["type"] == "ZeroDivisionError"


def test_verify() -> None:
    result = relugate.verify(MODEL, SPEC, timeout=30)
    assert result.verdict == "holds"


def test_verify_finds_a_counterexample(tmp_path: Path) -> None:
    result = relugate.verify(MODEL, violated_spec(tmp_path / "v.vnnlib"), timeout=30)
    assert result.verdict == "violated" and result.counterexample is not None


def test_build(tmp_path: Path) -> None:
    (tmp_path / "relugate.toml").write_text(
        f'[defaults]\ntarget = "none"\n\n[[models]]\nname = "c"\nmodel = "{MODEL}"\n'
        f'spec = "{SPEC}"\n'
    )
    done = relugate.build(tmp_path / "relugate.toml")
    assert done.ok and list(done.outcomes) == ["c"] and done.outcomes["c"].guaranteed
    written = json.loads((tmp_path / "build" / "relugate" / "build-report.json").read_text())
    assert validate(written) == done.report


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'compyle'"):
        relugate.compyle  # noqa: B018
    assert {"compile", "verify", "build"} <= set(dir(relugate))


def test_runtime_import_stays_light() -> None:
    """``import relugate.runtime`` (and ``import relugate``) pulls in no compiler dependency."""
    code = (
        "import sys, relugate, relugate.runtime\n"
        "heavy = [m for m in ('onnx', 'z3', 'scipy', 'onnxruntime', 'relugate.compiler.api')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def readme_example() -> str:
    """The first Python block under the README's "Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Python API section"
    return match.group(1)


def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's example, run as written from a folder holding examples/ (it builds
    the TVM library, a few seconds)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "example.py").write_text(readme_example())
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0 True"
    assert lines[1] == "examples/collision.vnnlib holds proved"
    assert re.fullmatch(r"\d+ ReLUs removed", lines[2]) and int(lines[2].split()[0]) > 0
    assert lines[3] == "[2]"
    assert lines[4] == "holds crown"
    validate(json.loads((tmp_path / "build" / "api-demo.json").read_text()))
    assert (tmp_path / "build" / "api-demo" / "model.so").is_file()
