"""The shipped example is what ``compiler/example.py`` writes, and it compiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from conftest import ROOT
from onnx import numpy_helper

from relugate.compiler.compile import CompileOptions, compile_model
from relugate.compiler.example import ADVISORIES, SPEC, teacher, write_example
from relugate.compiler.spec import read_vnnlib


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_regenerating_the_example_gives_the_shipped_files(tmp_path: Path) -> None:
    model, spec = write_example(tmp_path)
    shipped = weights(ROOT / "examples" / "collision.onnx")
    fresh = weights(model)
    assert shipped.keys() == fresh.keys()
    for name, value in shipped.items():
        np.testing.assert_allclose(fresh[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    assert spec.read_text() == (ROOT / "examples" / "collision.vnnlib").read_text() == SPEC


def test_example_property_box_is_a_hard_brake_region() -> None:
    """The spec's box lies where the teacher says HARD_BRAKE: CLEAR is the unsafe answer there."""
    prop = read_vnnlib(ROOT / "examples" / "collision.vnnlib")
    box = prop.domain()
    x = box.sample(1000, np.random.default_rng(0))
    assert set(teacher(x)) == {ADVISORIES.index("HARD_BRAKE")}
    clear_on_top = np.array([[5.0, 1.0, 1.0]])
    assert prop.cases[0].is_unsafe(clear_on_top).all()


def test_example_compiles(tmp_path: Path) -> None:
    result = compile_model(
        ROOT / "examples" / "collision.onnx",
        CompileOptions(out_dir=tmp_path / "out"),
        specs=[ROOT / "examples" / "collision.vnnlib"],
    )
    assert [layer.kind for layer in result.network.layers] == [
        "dense",
        "relu",
        "dense",
        "relu",
        "dense",
    ]
    assert result.report["check"]["max_relative_error"] <= 1e-5
    assert (tmp_path / "out" / "model.onnx").is_file()
