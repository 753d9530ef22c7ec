"""The bundle and its runtime: checks before loading, inputs, policies, counters."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tvm_helpers import COLLISION_BOX, assert_close, collision, gated_model, make_bundle, reference

import relugate.runtime as rt
from relugate.compiler.backends.tvm import lower
from relugate.compiler.errors import RelugateError
from relugate.runtime.checks import domain_bounds

RNG = np.random.default_rng(0)
LO, HI = np.array(COLLISION_BOX["lo"]), np.array(COLLISION_BOX["hi"])


def inside(n: int) -> np.ndarray:
    return (LO + RNG.random((n, 3)) * (HI - LO)).astype(np.float32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", certificate={"proved": []})


def test_run_single_and_batch_match_onnxruntime(bundle: Path) -> None:
    model = rt.load(bundle)
    x = inside(50)
    assert_close(reference(collision(), x), model.run(x))
    one = model.run(x[:1])
    assert one.shape == (1, 3)
    assert_close(reference(collision(), x[:1]), one)
    assert_close(reference(collision(), x), model.run(x.astype(np.float64)))
    stats = model.stats()
    assert stats["calls"] == 3 and stats["inputs"] == 101 and stats["out_of_domain"] == 0


def test_bad_inputs_are_refused_and_counted(bundle: Path) -> None:
    model = rt.load(bundle)
    nan = inside(4)
    nan[2, 1] = np.nan
    cases = [
        (nan, "NaN or Inf .* row 2, element 1"),
        (np.full((1, 3), np.inf, np.float32), "NaN or Inf"),
        (np.full((1, 3), 1e300), "NaN or Inf"),  # beyond float32
        (inside(2).reshape(1, 6), "must have shape"),
        (inside(1)[0], "must have shape"),
        (inside(2).astype(np.int32), "float32 or float64"),
    ]
    for x, message in cases:
        with pytest.raises(rt.BadInput, match=message):
            model.run(x)
    assert model.stats()["bad_inputs"] == len(cases)


def test_nan_refused_without_a_domain(tmp_path: Path) -> None:
    model = rt.load(make_bundle(tmp_path / "b", domain=None))
    x = inside(3)
    x[1, 0] = np.nan
    with pytest.raises(rt.BadInput, match="row 1, element 0"):
        model.run(x)
    far = np.full((2, 3), 1e4, np.float32)
    assert_close(reference(collision(), far), model.run(far))


def test_policy_reject(bundle: Path) -> None:
    model = rt.load(bundle)
    x = inside(5)
    x[3, 2] = 41.0
    with pytest.raises(rt.OutOfDomain, match=r"1 of 5 .* row 3, element 2 = 41\.0"):
        model.run(x)
    stats = model.stats()
    assert stats["out_of_domain"] == 1 and stats["rejected"] == 1 and stats["inputs"] == 0


def test_policy_clamp(tmp_path: Path) -> None:
    model = rt.load(make_bundle(tmp_path / "b", policy="clamp"))
    x = inside(6)
    x[0] = [0.0, 100.0, 20.0]
    x[4, 1] = 9.0
    clipped = np.clip(x, LO, HI).astype(np.float32)
    result = model.run_detailed(x)
    assert_close(reference(collision(), clipped), result.output)
    assert result.out_of_domain.tolist() == [True, False, False, False, True, False]
    assert model.stats()["clamped"] == 2 and model.stats()["out_of_domain"] == 2


def test_policy_flag(tmp_path: Path) -> None:
    model = rt.load(make_bundle(tmp_path / "b", policy="flag"))
    x = inside(4)
    x[1, 0] = 15.5
    result = model.run_detailed(x)
    assert_close(reference(collision(), x), result.output)
    assert result.out_of_domain.tolist() == [False, True, False, False]
    assert model.stats()["flagged"] == 1


def test_domain_bounds_are_the_float32_widening() -> None:
    lo, hi = domain_bounds([0.1, -1.0], [0.3, 1e39])
    up, down = float(np.nextafter(lo[0], np.float32(1))), float(np.nextafter(hi[0], np.float32(0)))
    assert float(lo[0]) <= 0.1 < up  # rounded down (compare in float64: NEP 50)
    assert float(hi[0]) >= 0.3 > down  # rounded up
    assert lo[1] == -1 and hi[1] == np.inf


def test_gate_firings_are_counted(tmp_path: Path) -> None:
    model_proto = gated_model(threshold=0.5)
    model = rt.load(make_bundle(tmp_path / "b", model=model_proto))
    x = RNG.normal(0, 1, (200, 2)).astype(np.float32)
    result = model.run_detailed(x)
    want = reference(model_proto, x)
    assert_close(want, result.output)
    relu = np.maximum(x @ np.asarray(onnx_weight(model_proto)).T, 0)
    fired = (relu > 0.5).any(axis=1)
    assert 0 < fired.sum() < len(x)
    np.testing.assert_array_equal(result.gate_fired, fired)
    stats = model.stats()
    assert stats["gate_fired"] == int(fired.sum())
    assert stats["gate_fired_by_output"] == (relu > 0.5).sum(axis=0).tolist()
    # the lean path counts the same, from the outputs it has (no second run): a batch
    # large enough for numpy, and row by row (Python lists)
    for rows in (x, *(x[i : i + 1] for i in range(40))):
        model.reset_stats()
        detailed = model.run_detailed(rows)
        want_stats = model.stats()
        model.reset_stats()
        np.testing.assert_array_equal(model.run(rows), detailed.output)
        assert model.stats() == want_stats


def onnx_weight(model: object) -> np.ndarray:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}  # type: ignore[attr-defined]
    return numpy_helper.to_array(inits["W"])


def test_fixed_batch_bundle_runs_any_batch(tmp_path: Path) -> None:
    model = rt.load(make_bundle(tmp_path / "b", lowered=lower(collision(), "llvm", batch=4)))
    assert model.manifest["input"]["shape"] == [4, 3]
    for n in (1, 4, 11):
        x = inside(n)
        assert_close(reference(collision(), x), model.run(x))


def test_eight_threads_get_their_own_results(bundle: Path) -> None:
    model = rt.load(bundle)
    inputs = [inside(int(n)) for n in RNG.integers(1, 40, 8)]
    wants = [reference(collision(), x) for x in inputs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(50):
                assert_close(wants[i], model.run(inputs[i]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert model.stats()["calls"] == 400


BLOCKER = """
import sys
BLOCKED = ("onnx", "onnxruntime", "z3", "scipy", "onnx_graphsurgeon")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("runtime must not import " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import relugate.runtime as rt
m = rt.load(sys.argv[1])
y = m.run(np.array([[6.0, 11.0, 12.0]], np.float32))
print(y.shape, m.stats()["inputs"], sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED))
"""


@pytest.mark.parametrize("runtime_only", [False, True], ids=["full-tvm", "tvm-runtime-lib"])
def test_runtime_needs_no_compiler_packages(bundle: Path, runtime_only: bool) -> None:
    env = dict(os.environ)
    if runtime_only:  # TVM loads libtvm_runtime only, as a wheel without libtvm_compiler would
        env["TVM_USE_RUNTIME_LIB"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(bundle)],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1, 3) 1 []"


def test_runtime_errors_are_relugate_errors() -> None:
    assert issubclass(rt.BundleError, RelugateError) and issubclass(rt.OutOfDomain, rt.BadInput)


def test_model_without_batch_axis(tmp_path: Path) -> None:
    from conftest import make_model
    from onnx import helper

    w = RNG.normal(0, 1, (4, 3)).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        [("x", [4])], [("y", [3])], {"W": w},
    )  # fmt: skip
    model = rt.load(make_bundle(tmp_path / "b", model=proto, domain=None))
    assert model.manifest["input"]["has_batch"] is False
    x = RNG.normal(0, 1, (5, 4)).astype(np.float32)
    want = np.maximum(x @ w, 0)
    assert_close(want, model.run(x))  # a batch: rows one by one
    assert_close(want[0], model.run(x[0]))  # one input, shaped like the model input


def test_wide_inputs_checked_columnwise(tmp_path: Path) -> None:
    from tvm_helpers import conv_net

    proto = conv_net()  # 64 input values: the min/max path of the domain check
    box = {"lo": [-1.0] * 64, "hi": [1.0] * 64}
    model = rt.load(make_bundle(tmp_path / "b", model=proto, domain=box))
    x = RNG.uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32)
    assert_close(reference(proto, x), model.run(x))
    bad = x.copy()
    bad[7, 0, 3, 2] = np.nan
    with pytest.raises(rt.BadInput, match="row 7, element 26"):
        model.run(bad)
    bad[7, 0, 3, 2] = 1.5
    with pytest.raises(rt.OutOfDomain, match="row 7, element 26"):
        model.run(bad)
    assert model.stats()["inputs"] == 40 and model.stats()["rejected"] == 1
