"""The example CI workflow (``docs/ci-workflow.yml``): its compile, summary and gate steps
run here as written, with bash, on the shipped example (the workflow's defaults) and on a
property that cannot be guaranteed by proof."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from pipeline_helpers import read_report, violated_spec

yaml = pytest.importorskip("yaml")

WORKFLOW = ROOT / "docs" / "ci-workflow.yml"


def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def step(name: str) -> dict[str, Any]:
    steps = workflow()["jobs"]["compile"]["steps"]
    [found] = [s for s in steps if s.get("name") == name]
    return found


def run_step(name: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A ``run:`` block as GitHub runs it (bash -e), with the workflow's env and ``env``."""
    return subprocess.run(
        ["bash", "-e", "-c", step(name)["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # relugate and python of this venv
    env = {**os.environ, **{k: str(v) for k, v in workflow()["env"].items()}, **extra}
    env["PATH"] = bin_dir + os.pathsep + env["PATH"]
    env["GITHUB_OUTPUT"] = str(tmp_path / "github_output")
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "step_summary.md")
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def outputs(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "github_output").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_workflow_shape() -> None:
    flow = workflow()
    assert set(flow["jobs"]) == {"compile", "deploy"}
    assert flow["jobs"]["deploy"]["needs"] == "compile"
    assert "needs.compile.outputs.exit_code == '0'" in flow["jobs"]["deploy"]["if"]
    gate = step("Gate on the exit code and the report")
    assert gate["env"]["CODE"] == "${{ steps.compile.outputs.exit_code }}"


def test_compile_and_gate_pass_on_the_example(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = job_env(tmp_path)
    compiled = run_step("Compile", tmp_path, env)
    assert compiled.returncode == 0, compiled.stderr
    assert outputs(tmp_path)["exit_code"] == "0"
    assert read_report(tmp_path / "report.json")["status"] == "ok"
    summary = run_step("Summary", tmp_path, env)
    assert summary.returncode == 0, summary.stderr
    text = (tmp_path / "step_summary.md").read_text()
    assert "### relugate: ok (exit 0)" in text and "holds -> proved" in text
    gate = run_step("Gate on the exit code and the report", tmp_path, {**env, "CODE": "0"})
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "deployable: proved, 0 gates" in gate.stdout


def test_gate_blocks_a_property_that_is_not_proved(tmp_path: Path) -> None:
    spec = violated_spec(tmp_path / "violated.vnnlib")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = job_env(tmp_path, SPEC=str(spec), REQUIRE="proof")
    compiled = run_step("Compile", tmp_path, env)
    assert compiled.returncode == 0, compiled.stderr  # the step records, the gate decides
    code = outputs(tmp_path)["exit_code"]
    assert code == "4"
    gate = run_step("Gate on the exit code and the report", tmp_path, {**env, "CODE": code})
    assert gate.returncode == 1
    assert "::error::not deployable, a property could not be guaranteed" in gate.stdout
    assert "--require proof" in gate.stdout
    summary = run_step("Summary", tmp_path, env)
    assert summary.returncode == 0, summary.stderr
    assert "require proof: NOT met" in (tmp_path / "step_summary.md").read_text()
