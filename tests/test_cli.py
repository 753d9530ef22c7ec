"""The ``relugate`` command line, run as a user would: exit codes, messages, files.

Most runs go through typer's ``CliRunner`` in-process; a few run the installed
console script to check what really reaches the terminal.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from cli_helpers import (
    affine_model,
    assert_no_traceback,
    hidden_leftovers,
    invoke,
    ort_run,
    run_exe,
    says,
    unsupported_model,
    write_vnnlib,
)
from conftest import mlp_model, save_model

import relugate
from relugate.compiler import cli
from relugate.compiler import compile as compile_mod
from relugate.compiler import inspect as inspect_mod
from relugate.compiler.frontend import load_model
from relugate.compiler.onnx_run import TOLERANCE
from relugate.compiler.pipeline import pass_names

PASS_FIELDS = ("relus_before", "relus_after", "params_before", "params_after")


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return save_model(mlp_model([3, 5, 2]), tmp_path / "mlp.onnx")


@pytest.fixture
def affine(tmp_path: Path) -> Path:
    return save_model(affine_model(), tmp_path / "affine.onnx")


@pytest.fixture
def unsupported(tmp_path: Path) -> Path:
    return save_model(unsupported_model(), tmp_path / "unsup.onnx")


def ok(*args: str | Path) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def fails(code: int, *args: str | Path) -> str:
    """Run, expect exit ``code`` with an error and no traceback; return stderr."""
    result = invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.strip(), "an error must say what is wrong"
    assert_no_traceback(result.stdout + result.stderr)
    return result.stderr


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


# --- help, version ------------------------------------------------------------


def test_version() -> None:
    assert ok("--version").strip() == f"relugate {relugate.__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_root_help_lists_every_command(flag: str) -> None:
    text = ok(flag)
    for name in typer.main.get_command(cli.app).commands:
        assert name in text, name
    assert "--debug" in text and "--version" in text


@pytest.mark.parametrize("command", sorted(typer.main.get_command(cli.app).commands))
def test_help_of_every_command(command: str) -> None:
    text = ok(command, "--help")
    assert "Usage" in text and command in text
    click_command = typer.main.get_command(cli.app).commands[command]
    for param in click_command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in text, (command, opt)


def test_passes_lists_the_pipeline_with_whole_summaries() -> None:
    lines = [line for line in ok("passes").splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == [
        f"{i}. {name}" for i, name in enumerate(pass_names(), start=1)
    ]
    for line in lines:  # the first paragraph of the docstring, not its first line
        assert line.rstrip().endswith("."), line


def test_unknown_option_is_a_usage_error(mlp: Path) -> None:
    result = invoke("inspect", mlp, "--no-such-option")
    assert result.exit_code == 2
    assert "--no-such-option" in result.output


# --- inspect --------------------------------------------------------------------


def test_inspect_table(mlp: Path) -> None:
    text = ok("inspect", mlp)
    assert says(text, "supported", "yes", "ReLUs", "normalized layers", "gemm0", "relu0", "gemm1")
    assert says(text, "Gemm x2, Relu x1")


def test_inspect_json(mlp: Path) -> None:
    info = json.loads(ok("inspect", mlp, "--json"))
    assert info["supported"] is True and info["reason"] is None
    assert info["stats"]["relus"] == 5
    assert info["stats"]["params"] == 3 * 5 + 5 + 5 * 2 + 2
    assert [layer["name"] for layer in info["layers"]] == ["gemm0", "relu0", "gemm1"]
    assert info["inputs"] == [{"name": "x", "shape": [1, 3]}]


def test_inspect_unsupported(unsupported: Path) -> None:
    err = fails(3, "inspect", unsupported)
    assert says(err, "unsupported", "'sig' (Sigmoid)", "'lstm' (LSTM)")
    result = invoke("inspect", unsupported, "--json")
    assert result.exit_code == 3
    info = json.loads(result.stdout)
    assert info["supported"] is False
    assert info["unsupported_nodes"] == [["sig", "Sigmoid"], ["lstm", "LSTM"]]


def test_inspect_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert says(fails(3, "inspect", tmp_path / "junk.onnx"), "bad model", "junk.onnx")
    assert says(fails(3, "inspect", tmp_path / "gone.onnx"), "gone.onnx", "no such file")


def test_names_with_brackets_are_printed_verbatim(tmp_path: Path) -> None:
    # rich reads "[...]" as markup: "[/b]" used to crash the CLI, "[red]" vanished
    folder = tmp_path / "m[/b]"
    folder.mkdir(parents=True)
    model = save_model(mlp_model([3, 5, 2]), folder / "net[red].onnx")
    assert says(ok("inspect", model), "m[/b]/net[red].onnx")
    assert says(fails(3, "inspect", folder / "gone[/i].onnx"), "gone[/i].onnx: no such file")
    out = tmp_path / "out[/x]"
    assert says(ok("compile", model, "-o", out), f"wrote {out}/model.onnx")
    assert (out / "report.json").is_file()
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    assert says(ok("run", model, tmp_path / "x.npy", "-o", folder / "y[u].npy"), "m[/b]/y[u].npy")
    bad = mlp_model([3, 5, 2])
    bad.graph.node.append(onnx.helper.make_node("Sigmoid", ["y"], ["z"], name="[/bold]sig"))
    bad.graph.output[0].name = "z"
    assert says(fails(3, "inspect", save_model(bad, tmp_path / "b.onnx")), "'[/bold]sig' (Sigmoid)")


# --- compile ----------------------------------------------------------------------


def check_bundle(out: Path, original: Path, lo: np.ndarray, hi: np.ndarray) -> dict:
    """OUT holds a loadable model that matches the original on the box, and a full report
    (and, with a spec, the gate certificate)."""
    names = {p.name for p in out.iterdir()} - {"certificate.json"}
    assert sorted(names) == ["manifest.json", "model.onnx", "model.so", "report.json"]
    compiled = out / "model.onnx"
    onnx.checker.check_model(onnx.load(str(compiled)))
    load_model(compiled)
    x = np.random.default_rng(0).uniform(lo, hi, (32, len(lo)))
    np.testing.assert_allclose(ort_run(compiled, x), ort_run(original, x), rtol=1e-4, atol=1e-5)
    report = read_report(out)
    assert [p["name"] for p in report["passes"]] == pass_names()
    for step in report["passes"]:
        for key in PASS_FIELDS:
            assert isinstance(step[key], int) and step[key] >= 0, (step["name"], key)
    assert report["passes"][0]["relus_before"] == report["before"]["relus"]
    assert report["passes"][-1]["params_after"] == report["after"]["params"]
    assert 0 <= report["check"]["max_relative_error"] <= 1e-5
    np.testing.assert_allclose(report["domain"]["lo"], lo)
    np.testing.assert_allclose(report["domain"]["hi"], hi)
    assert hidden_leftovers(out.parent) == []
    return report


def test_compile_with_input_box(affine: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = ok("compile", affine, "-o", out, "--input-box=-1,1")
    assert says(text, f"wrote {out}/model.onnx")
    assert "fold_layout" not in text  # the pass table is only shown with --time-passes
    report = check_bundle(out, affine, -np.ones(4), np.ones(4))
    assert report["after"]["params"] < report["before"]["params"]  # the passes did something
    assert report["verify_each"] is None
    assert report["properties"] == []


def test_compile_with_one_box_per_input(affine: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxes = ["--input-box=0,1", "--input-box=-2,0", "--input-box=0.5,0.5", "--input-box=-1,3"]
    ok("compile", affine, "-o", out, *boxes)
    check_bundle(out, affine, np.array([0, -2, 0.5, -1.0]), np.array([1, 0, 0.5, 3.0]))


def test_compile_with_spec(affine: Path, tmp_path: Path) -> None:
    lo, hi = [-1, 0, -0.5, 0], [1, 0.5, 0.5, 2]
    spec = write_vnnlib(tmp_path / "prop.vnnlib", lo, hi, n_outputs=2)
    out = tmp_path / "out"
    ok("compile", affine, "-o", out, "--spec", spec)
    report = check_bundle(out, affine, np.array(lo, float), np.array(hi, float))
    assert report["properties"] == [{"source": str(spec), "cases": 1}]


def test_compile_json(mlp: Path, tmp_path: Path) -> None:
    report = json.loads(ok("compile", mlp, "-o", tmp_path / "out", "--json"))
    assert report == read_report(tmp_path / "out") | {"seconds": report["seconds"]}


def test_time_passes_prints_a_pass_table(affine: Path, tmp_path: Path) -> None:
    text = ok("compile", affine, "-o", tmp_path / "out", "--time-passes")
    assert "passes" in text and "ms" in text
    for name in pass_names():
        assert name in text, name
    report = read_report(tmp_path / "out")
    for step in report["passes"]:
        row = f"{step['relus_before']:,} -> {step['relus_after']:,}"
        assert row in text


def test_dump_ir_writes_one_model_per_pass(affine: Path, tmp_path: Path) -> None:
    ir = tmp_path / "ir"
    ok("compile", affine, "-o", tmp_path / "out", "--dump-ir", ir)
    expected = ["00_import.onnx"] + [f"{i:02d}_{n}.onnx" for i, n in enumerate(pass_names(), 1)]
    assert sorted(p.name for p in ir.iterdir()) == expected
    x = np.random.default_rng(1).uniform(-1, 1, (16, 4))
    reference = ort_run(affine, x)
    for name in expected:  # every snapshot is valid ONNX computing the same function
        onnx.checker.check_model(onnx.load(str(ir / name)))
        np.testing.assert_allclose(ort_run(ir / name, x), reference, rtol=1e-4, atol=1e-5)
    final = onnx.load(str(ir / expected[-1]))
    assert len(final.graph.node) == len(onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node)


def test_verify_each_is_recorded(affine: Path, tmp_path: Path) -> None:
    ok("compile", affine, "-o", tmp_path / "out", "--verify-each", "--input-box=-1,1")
    report = read_report(tmp_path / "out")
    changed = [p["name"] for p in report["passes"] if p["changed"]]
    assert changed, "the test model must make some pass change it"
    assert sorted(report["verify_each"]) == sorted(changed)
    assert all(0 <= err <= TOLERANCE for err in report["verify_each"].values())


def test_existing_output_needs_force(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok("compile", mlp, "-o", out)
    (out / "extra.txt").write_text("from the first run")
    first = (out / "report.json").read_text()
    err = fails(5, "compile", mlp, "-o", out, "--input-box=0,1")
    assert says(err, "bundle error", str(out), "already exists", "--force")
    assert (out / "extra.txt").is_file() and (out / "report.json").read_text() == first
    ok("compile", mlp, "-o", out, "--force", "--input-box=0,1")
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.so",
        "report.json",
    ]
    assert read_report(out)["domain"]["lo"] == [0.0, 0.0, 0.0]
    assert hidden_leftovers(tmp_path) == []


def test_force_refuses_a_folder_not_written_by_relugate(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    err = fails(5, "compile", mlp, "-o", out, "--force")
    assert says(err, str(out), "not empty", "not written by relugate")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert hidden_leftovers(tmp_path) == []


def test_force_fills_an_empty_folder(mlp: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    ok("compile", mlp, "-o", tmp_path / "empty", "--force")
    assert (tmp_path / "empty" / "report.json").is_file()


def test_output_that_is_a_file(mlp: Path, tmp_path: Path) -> None:
    assert says(fails(5, "compile", mlp, "-o", mlp, "--force"), "is not a folder")
    assert load_model(mlp)  # untouched


def test_output_folder_mode_follows_umask(mlp: Path, tmp_path: Path) -> None:
    # tempfile.mkdtemp's 0o700 used to stay on the finished folder
    ok("compile", mlp, "-o", tmp_path / "out")
    (tmp_path / "plain").mkdir()
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_force_into_the_current_folder(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    ok("compile", mlp, "-o", out)
    monkeypatch.chdir(out)
    result = invoke("compile", mlp, "-o", ".", "--force")
    assert result.exit_code in (0, 5), (result.exit_code, result.stderr)  # not an internal error
    assert_no_traceback(result.stderr)
    assert (tmp_path / "out" / "report.json").is_file()
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "case",
    [
        "unsupported",
        "bad-spec",
        "spec-inputs",
        "box-count",
        "spec-and-box",
        "missing-spec",
        "empty-box",
    ],
)
def test_failing_compile_leaves_nothing(
    case: str, mlp: Path, unsupported: Path, tmp_path: Path
) -> None:
    bad_spec = tmp_path / "bad.vnnlib"
    bad_spec.write_text("(declare-const X_0 Real)\n(assert (>= X_0 0)\n")
    four = write_vnnlib(tmp_path / "four.vnnlib", [0] * 4, [1] * 4, n_outputs=2)
    good = write_vnnlib(tmp_path / "good.vnnlib", [0] * 3, [1] * 3, n_outputs=2)
    args, needles = {
        "unsupported": ([unsupported], ["unsupported model", "'sig' (Sigmoid)", "'lstm' (LSTM)"]),
        "bad-spec": ([mlp, "--spec", bad_spec], ["bad spec", "bad.vnnlib:2"]),
        "spec-inputs": ([mlp, "--spec", four], ["four.vnnlib", "4 inputs", "3 inputs"]),
        "box-count": ([mlp, "--input-box=0,1", "--input-box=0,1"], ["--input-box", "2 intervals"]),
        "spec-and-box": (
            [mlp, "--spec", good, "--input-box=0,1"],
            ["either --spec or --input-box"],
        ),
        "missing-spec": ([mlp, "--spec", tmp_path / "nope.vnnlib"], ["nope.vnnlib", "not found"]),
        "empty-box": ([mlp, "--input-box=1,0"], ["lower bound 1.0 > upper bound 0.0"]),
    }[case]
    out = tmp_path / "out"
    err = fails(3, "compile", *args, "-o", out)
    assert says(err, *needles), err
    assert not out.exists()
    assert hidden_leftovers(tmp_path) == []


def test_failure_while_writing_leaves_nothing(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path, data: object) -> None:
        path.write_text("{")  # something half-written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    out = tmp_path / "out"
    ok("compile", mlp, "-o", out, "--input-box=0,1")
    before = (out / "report.json").read_text()
    monkeypatch.setattr(compile_mod, "write_json", disk_full)
    assert says(fails(5, "compile", mlp, "-o", tmp_path / "new"), "No space left on device")
    assert not (tmp_path / "new").exists()
    fails(5, "compile", mlp, "-o", out, "--force")
    assert (out / "report.json").read_text() == before  # the old bundle survives
    assert hidden_leftovers(tmp_path) == []


# --- run ------------------------------------------------------------------------


def test_run_single_input(mlp: Path, tmp_path: Path) -> None:
    x = np.array([[0.5, -1.0, 2.0]], np.float32)
    np.save(tmp_path / "x.npy", x)
    text = ok("run", mlp, tmp_path / "x.npy")
    expected = ort_run(mlp, x)
    printed = np.array([float(v) for v in text.replace("[", " ").replace("]", " ").split()])
    np.testing.assert_allclose(printed, expected.ravel(), atol=1e-5)
    ok("run", mlp, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (1, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_run_batch(mlp: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(7, 3))  # float64 is accepted
    np.save(tmp_path / "xs.npy", x)
    text = ok("run", mlp, tmp_path / "xs.npy", "-o", tmp_path / "ys.npy")
    assert says(text, "ys.npy", "(7, 2)")
    np.testing.assert_allclose(np.load(tmp_path / "ys.npy"), ort_run(mlp, x), rtol=1e-5, atol=1e-5)


def test_run_output_name_is_kept(mlp: Path, tmp_path: Path) -> None:
    # np.save(path) appends .npy; the CLI printed and promised the name the user gave
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    text = ok("run", mlp, tmp_path / "x.npy", "-o", tmp_path / "result")
    assert says(text, f"wrote {tmp_path / 'result'} (2, 2)")
    assert np.load(tmp_path / "result").shape == (2, 2)


def test_run_output_in_missing_folder(mlp: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    err = fails(5, "run", mlp, tmp_path / "x.npy", "-o", tmp_path / "no" / "y.npy")
    assert says(err, "y.npy", "cannot write")


def _nan() -> np.ndarray:
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    return x


@pytest.mark.parametrize(
    ("array", "needles"),
    [
        (np.zeros((4, 5), np.float32), ["input 'x'", "(N, 3)", "(4, 5)"]),
        (np.zeros((2, 1, 3), np.float32), ["input 'x'", "(2, 1, 3)"]),
        (np.zeros((0, 3), np.float32), ["input 'x'", "(0, 3)"]),
        (_nan(), ["input 'x'", "NaN", "row 2, element 1"]),
        (np.full((1, 3), np.inf), ["input 'x'", "NaN or Inf"]),
        (np.full((1, 3), 1e300), ["input 'x'", "beyond float32"]),
        (np.ones((2, 3), np.int64), ["input 'x'", "float32 or float64", "int64"]),
        (np.ones((2, 3), np.float16), ["input 'x'", "float16"]),
    ],
    ids=["shape", "rank", "empty", "nan", "inf", "overflow", "int", "float16"],
)
@pytest.mark.filterwarnings("error")  # e.g. numpy's overflow warning on 1e300
def test_run_bad_arrays(mlp: Path, tmp_path: Path, array: np.ndarray, needles: list[str]) -> None:
    np.save(tmp_path / "x.npy", array)
    result = invoke("run", mlp, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert says(result.stderr, "error (bad input)", *needles), result.stderr
    assert_no_traceback(result.stderr)
    assert not (tmp_path / "y.npy").exists()


def test_run_bad_files(mlp: Path, tmp_path: Path) -> None:
    (tmp_path / "text.npy").write_text("1 2 3\n")
    assert says(fails(3, "run", mlp, tmp_path / "text.npy"), "text.npy", "not a readable .npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert says(fails(3, "run", mlp, tmp_path / "obj.npy"), "obj.npy", "not a readable .npy")
    assert says(fails(3, "run", mlp, tmp_path / "absent.npy"), "absent.npy")


def test_run_unsupported_model(unsupported: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    assert says(fails(3, "run", unsupported, tmp_path / "x.npy"), "'sig' (Sigmoid)")


# --- internal errors ------------------------------------------------------------


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("kaboom [/x] in the inspector")


def test_internal_error_exit_70(mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_mod, "inspect_model", _boom)
    result = invoke("inspect", mlp)
    assert result.exit_code == 70
    assert says(result.stderr, "internal error", "RuntimeError: kaboom [/x] in the inspector")
    assert says(result.stderr, "--debug")
    assert_no_traceback(result.stderr)


def test_debug_shows_the_traceback(mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_mod, "inspect_model", _boom)
    result = invoke("--debug", "inspect", mlp)
    assert result.exit_code == 70
    assert "Traceback" in result.stderr and "_boom" in result.stderr
    assert says(result.stderr, "internal error")
    monkeypatch.undo()
    result = invoke("--debug", "inspect", mlp.with_name("absent.onnx"))  # user errors too
    assert result.exit_code == 3 and "Traceback" in result.stderr
    result = invoke("inspect", mlp.with_name("absent.onnx"))  # and --debug does not stick
    assert result.exit_code == 3 and "Traceback" not in result.stderr


def test_internal_error_during_compile_leaves_nothing(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = compile_mod.write_json

    def half_then_crash(path: Path, data: object) -> None:
        real(path, data)
        raise RuntimeError("crashed after writing")

    monkeypatch.setattr(compile_mod, "write_json", half_then_crash)
    result = invoke("compile", mlp, "-o", tmp_path / "out")
    assert result.exit_code == 70 and says(result.stderr, "internal error", "crashed after writing")
    assert not (tmp_path / "out").exists()
    assert hidden_leftovers(tmp_path) == []


# --- the installed script ---------------------------------------------------------


def test_script_and_module_version() -> None:
    proc = run_exe("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"relugate {relugate.__version__}"
    module = [sys.executable, "-m", "relugate", "inspect", "absent.onnx"]
    proc = subprocess.run(module, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3 and says(proc.stderr, "absent.onnx: no such file")
    assert_no_traceback(proc.stderr)


def test_script_errors_have_no_traceback(mlp: Path, tmp_path: Path) -> None:
    x = np.zeros((2, 3), np.float32)
    x[1, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    proc = run_exe("run", mlp, tmp_path / "x.npy")
    assert proc.returncode == 3
    assert says(proc.stderr, "error (bad input)", "NaN", "row 1, element 0")
    assert_no_traceback(proc.stderr)
    assert proc.stdout == ""
    (tmp_path / "cut.onnx").write_bytes(mlp.read_bytes()[:100])
    proc = run_exe("compile", tmp_path / "cut.onnx", "-o", tmp_path / "out")
    assert proc.returncode == 3 and says(proc.stderr, "bad model", "cut.onnx")
    assert_no_traceback(proc.stderr)
    assert not (tmp_path / "out").exists() and hidden_leftovers(tmp_path) == []


def test_script_compile_and_run(mlp: Path, tmp_path: Path) -> None:
    proc = run_exe("compile", "mlp.onnx", "-o", "out", "--input-box=-1,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc.stderr)
    np.save(tmp_path / "x.npy", np.ones((3, 3), np.float32))
    proc = run_exe("run", "out/model.onnx", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), ort_run(mlp, np.ones((3, 3))), rtol=1e-5, atol=1e-6
    )


def test_compiled_bundle_runs_in_the_runtime(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok("compile", mlp, "-o", out, "--input-box=-1,1")
    x = np.random.default_rng(3).uniform(-1, 1, (5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ok("run", out, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ort_run(mlp, x), rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "far.npy", np.full((1, 3), 5.0, np.float32))
    assert says(fails(3, "run", out, tmp_path / "far.npy"), "outside the domain")


def test_compile_without_a_library(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok("compile", mlp, "-o", out, "--input-box=-1,1", "--target", "none")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
