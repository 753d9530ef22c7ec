"""The example that ships with relugate: a small braking-advisory network.

Inputs (raw units): distance to the obstacle (m), closing speed (m/s), own
speed (m/s).  Outputs: scores for the advisories CLEAR, BRAKE, HARD_BRAKE.
The teacher rule is time to collision (distance / closing speed): under 2 s
HARD_BRAKE, under 5 s BRAKE, else CLEAR.  The network is trained here, in
NumPy, from a fixed seed, and written as ONNX the way exporters write it:
input normalization as Sub/Div, MatMul+Add and Gemm layers, a symbolic batch
axis, so the example exercises the front end's normalization.

The property (``collision.vnnlib``): with the obstacle 5-15 m away and closing
at 10-30 m/s, CLEAR is never the top advisory.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261123
RANGES = np.array([[0.0, 100.0], [-10.0, 30.0], [0.0, 40.0]])  # distance, closing speed, own speed
HIDDEN = 16
ADVISORIES = ("CLEAR", "BRAKE", "HARD_BRAKE")


def teacher(x: np.ndarray) -> np.ndarray:
    """Advisory index from time to collision."""
    ttc = np.where(x[:, 1] > 0, x[:, 0] / np.maximum(x[:, 1], 1e-9), np.inf)
    return np.where(ttc < 2.0, 2, np.where(ttc < 5.0, 1, 0))


def training_data(rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    x = RANGES[:, 0] + rng.random((n, 3)) * (RANGES[:, 1] - RANGES[:, 0])
    return x, teacher(x)


def _init(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        params += [rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)), np.zeros(n_out)]
    return params


def _forward(params: list[np.ndarray], x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    acts = [x]
    for i in range(0, len(params), 2):
        z = acts[-1] @ params[i] + params[i + 1]
        acts.append(np.maximum(z, 0) if i < len(params) - 2 else z)
    return acts, acts[-1]


def _grads(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    acts, logits = _forward(params, x)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = p
    g[np.arange(len(y)), y] -= 1
    g /= len(y)
    grads: list[np.ndarray] = []
    for i in range(len(params) - 2, -1, -2):
        grads = [acts[i // 2].T @ g, g.sum(axis=0), *grads]
        if i:
            g = (g @ params[i].T) * (acts[i // 2] > 0)
    return grads


def train(steps: int = 1500) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Weights (float64) and the input mean/std the model normalizes with."""
    rng = np.random.default_rng(SEED)
    x, y = training_data(rng)
    mean, std = x.mean(axis=0), x.std(axis=0)
    xn = (x - mean) / std
    params = _init(rng, [3, HIDDEN, HIDDEN, 3])
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):  # Adam
        for k, g in enumerate(_grads(params, xn, y)):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            params[k] -= 0.01 * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    return params, mean, std


def accuracy(params: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> float:
    x, y = training_data(np.random.default_rng(SEED + 1), 2000)
    _, logits = _forward(params, (x - mean) / std)
    return float(np.mean(logits.argmax(axis=1) == y))


def to_onnx(params: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> onnx.ModelProto:
    f32 = {
        "mean": mean.reshape(1, 3),
        "std": std.reshape(1, 3),
        "W1": params[0],
        "b1": params[1],
        "W2": params[2].T,
        "b2": params[3],  # Gemm with transB=1, as PyTorch writes it
        "W3": params[4].T,
        "b3": params[5],
    }
    nodes = [
        helper.make_node("Sub", ["obs", "mean"], ["centered"], name="normalize_sub"),
        helper.make_node("Div", ["centered", "std"], ["scaled"], name="normalize_div"),
        helper.make_node("MatMul", ["scaled", "W1"], ["mm1"], name="fc1_matmul"),
        helper.make_node("Add", ["mm1", "b1"], ["fc1"], name="fc1_add"),
        helper.make_node("Relu", ["fc1"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "W2", "b2"], ["fc2"], name="fc2", transB=1),
        helper.make_node("Relu", ["fc2"], ["h2"], name="relu2"),
        helper.make_node("Gemm", ["h2", "W3", "b3"], ["advisory"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "collision_advisory",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("advisory", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v.astype(np.float32), name=k) for k, v in f32.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="relugate.example"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


SPEC = """\
; relugate example property: obstacle close and closing fast => never CLEAR.
; Inputs are raw units: X_0 distance (m), X_1 closing speed (m/s), X_2 own speed (m/s).
; Outputs: Y_0 CLEAR, Y_1 BRAKE, Y_2 HARD_BRAKE.  The asserts describe the UNSAFE set.
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (>= X_0 5.0))
(assert (<= X_0 15.0))
(assert (>= X_1 10.0))
(assert (<= X_1 30.0))
(assert (>= X_2 10.0))
(assert (<= X_2 40.0))
; unsafe: CLEAR is (one of) the top advisories
(assert (>= Y_0 Y_1))
(assert (>= Y_0 Y_2))
"""


def write_example(folder: Path) -> tuple[Path, Path]:
    """Train the example network and write ``collision.onnx`` and ``collision.vnnlib``."""
    folder.mkdir(parents=True, exist_ok=True)
    params, mean, std = train()
    model_path, spec_path = folder / "collision.onnx", folder / "collision.vnnlib"
    onnx.save(to_onnx(params, mean, std), str(model_path))
    spec_path.write_text(SPEC)
    return model_path, spec_path
