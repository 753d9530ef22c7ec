"""Gate fusion on CPU (compiler/backends/gate_fusion.py): the gate ops of a gated model
share one kernel with the last layer, and the library still computes what onnxruntime
computes on the gated ONNX (both outputs), on rows where gates fire and where they do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_gates import TWO_ROWS
from test_verify import spec, tiny_net
from tvm_helpers import assert_close, reference

from relugate.compiler.backends.gate_fusion import fuse_with_gates, relabel_gate_tail
from relugate.compiler.backends.targets import resolve_target
from relugate.compiler.backends.tvm import import_relax, lower
from relugate.compiler.gates_onnx import append_gates, strip_gates
from relugate.compiler.spec import read_vnnlib
from relugate.passes.analysis.gate_design import design_gates

pytest.importorskip("tvm")


def gated_tiny(tmp_path: Path, switch: bool) -> onnx.ModelProto:
    """The tiny net with a two-row gate on [-1, 0.5]^2: with ``switch``, a box switch
    reads the input (gate nodes Gemm, Relu, Gemm, Gemm, ReduceMax, Gemm, Min); without,
    the gate holds on the whole compile domain (Gemm, ReduceMax, Gemm, Min)."""
    core = onnx.load(str(tiny_net(tmp_path)))
    prop = read_vnnlib(spec(tmp_path, -1, 0.5, TWO_ROWS))
    ranges = [[(np.array([-3.0, -1.0]), np.array([3.0, 1.0]))]]
    domain = None if switch else prop.cases[0].box
    return append_gates(core, design_gates([prop], [True], ranges, domain))


def kernels(mod: object) -> list[str]:
    """Names of the TIR functions ``main`` calls, in order."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    names: list[str] = []

    def visit(expr: object) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)  # type: ignore[index]
    return names


@pytest.mark.parametrize("switch", [False, True])
def test_gate_ops_share_the_last_layer_kernel(tmp_path: Path, switch: bool) -> None:
    gated = gated_tiny(tmp_path, switch)
    target = resolve_target("llvm", None, "sm_80", 1).target
    fused = kernels(fuse_with_gates(import_relax(gated, None)[0], target))
    plain = kernels(fuse_with_gates(import_relax(strip_gates(gated), None)[0], target))
    assert "relugate_gate" in fused[-1] and "relugate_gate" not in plain[-1]
    # the box switch reads the model input, so its two Gemms run before the last layer
    assert len(fused) == len(plain) + (2 if switch else 0), (fused, plain)


def test_ungated_model_is_left_alone(tmp_path: Path) -> None:
    mod = import_relax(onnx.load(str(tiny_net(tmp_path))), None)[0]
    assert relabel_gate_tail(mod) is mod  # no second output: nothing to fuse


@pytest.mark.parametrize(("batch", "switch"), [(None, True), (1, True), (64, False)])
def test_fused_library_matches_onnxruntime(tmp_path: Path, batch: int | None, switch: bool) -> None:
    gated = gated_tiny(tmp_path, switch)
    rng = np.random.default_rng(3)
    n = 512
    inside = rng.uniform(-1.0, 0.5, (n, 2))  # gates fire on part of the box
    outside = rng.uniform(0.5, 1.5, (n, 2))  # the box switch (if any) turns them off
    library = lower(gated, "llvm", batch).load()
    fired = 0
    for x in (inside.astype(np.float32), outside.astype(np.float32)):
        y, ungated, *counts = library.run_all(x)
        assert_close(reference(gated, x), y)
        assert_close(reference(strip_gates(gated), x), ungated)
        changed = y != ungated
        fired += int(changed.any(axis=1).sum())
        # the library counts firings itself, except when it runs the batch in chunks
        assert len(counts) == (1 if batch is None else 0)
        if counts:
            n_rows = len(x)  # the library counts the inputs no gate changed
            np.testing.assert_array_equal(n_rows - counts[0][0], changed.sum(axis=0))
            assert (n_rows - counts[0][1] == changed.any(axis=1).sum()).all()
    assert fired > 0  # the comparison saw the gate act


@pytest.mark.slow
def test_a_gated_model_tunes_with_its_gate_kernel_left_untuned(tmp_path: Path) -> None:
    """MetaSchedule's CPU rules cannot tile the fused last-layer-plus-gates kernel (a
    ``reverse-compute-at`` ScheduleError aborted all tuning); that task is skipped and
    reported, the others are tuned, and the library still agrees with onnxruntime."""
    gated = gated_tiny(tmp_path, switch=False)
    tuned = lower(gated, "llvm", batch=4, tune_seconds=8, tuning_db=tmp_path / "db")
    # (batch 4: small enough that the gates stay fused into the last layer)
    report = tuned.tuning
    assert report is not None and report.tasks >= 1
    assert [name for name in report.tasks_skipped if "relugate_gate" in name]
    x = np.random.default_rng(0).uniform(-1, 0.5, (4, 2)).astype(np.float32)
    assert_close(reference(gated, x), tuned.load().run(x))


@pytest.mark.slow
def test_large_tuned_batches_keep_the_last_layer_tunable(tmp_path: Path) -> None:
    """At batch >= PREFUSE_MAX_TUNED_BATCH a tuned gated library is not pre-fused: every
    task, the last layer's included, can be tuned, and none is skipped."""
    gated = gated_tiny(tmp_path, switch=False)
    tuned = lower(gated, "llvm", batch=64, tune_seconds=8, tuning_db=tmp_path / "db")
    assert tuned.tuning is not None and tuned.tuning.tasks_skipped == []
    x = np.random.default_rng(0).uniform(-1, 0.5, (64, 2)).astype(np.float32)
    y, ungated, counts = tuned.load().run_all(x)
    assert_close(reference(gated, x), y)
    assert (64 - counts[1] == (y != ungated).any(axis=1).sum()).all()
