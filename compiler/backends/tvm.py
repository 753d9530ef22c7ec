"""Lower the final ONNX model through TVM Relax to a compiled library.

``lower(model, target, batch, tune_seconds, tuning_db)`` imports the model
with ``tvm.relax.frontend.onnx.from_onnx`` (batch axis fixed or symbolic),
optionally tunes it with MetaSchedule (``tuning.py``), and builds it with
``tvm.compile``.  ``Lowered.export`` writes the library:

- ``llvm``: ``model.so``, loadable here (``Lowered.load()`` runs it in process);
- ``aarch64``: ``model.so`` linked by ``aarch64-linux-gnu-gcc`` when installed;
  otherwise ``model.tar`` (the aarch64 objects; link them on the board) and
  ``Lowered.link_error`` says the cross linker is missing;
- ``cuda``: ``model.so`` (host code and the CUDA source, which TVM's CUDA
  runtime JIT-compiles on load through ``tvm_callback_cuda_compile``: NVRTC
  from cuda-python, or nvcc with ``TVM_CUDA_COMPILE_MODE=nvcc``) and
  ``model.cu``; with nvcc on PATH, the source is compiled to ``model.fatbin``
  as a check that it builds.  Running needs a machine with an NVIDIA GPU.

Gated models: when the model holds output gates (nodes ``relugate_gate/...``
reading ``<out>_ungated``), the ungated output becomes a second output of
the library (packed with the output into one tensor, ``concat(axis=0)``), so the
runtime can count the inputs on which a gate changed the output by comparing
the two (no second compile).  With a batch axis (and opset >= 13) the library
also counts them: two more rows hold, per output element, the inputs whose value no
gate changed, and the number of inputs where none changed (``_count_nodes``), so
the runtime reads the counts instead of comparing the halves in numpy (30 us at
batch 1024, a third of a reduced ACAS Xu call where every input fires).  On
CPU targets the gate ops are fused into the last layer's kernel
(``gate_fusion.py``): one kernel writes the packed output.
"""

from __future__ import annotations

import shutil
import tarfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from relugate.compiler.backends import tuning
from relugate.compiler.backends.cuda import compile_cuda_source, cuda_source
from relugate.compiler.backends.gate_fusion import fuse_with_gates
from relugate.compiler.backends.targets import CROSS_GCC, TargetInfo, resolve_target
from relugate.compiler.errors import RelugateError, UnsupportedModel
from relugate.runtime.executor import Executor

CompiledModel = Executor
"""What ``Lowered.load()`` returns: ``run(x)`` the output, ``run_all(x)`` every library
output, through preallocated per-thread input tensors and zero-copy output views."""

BATCH_PARAM = "batch"
GATE_PREFIX = "relugate_gate/"
UNGATED_SUFFIX = "_ungated"
PACKED_SUFFIX = "_and_ungated"  # the packed library output: concat([out, ungated], axis=0)
COUNTS_SUFFIX = "_gate_counts"  # (2, *sample): per element, then in all, inputs left unchanged
PREFUSE_MAX_TUNED_BATCH = 64
"""Tuned gated libraries for batches this large keep the last layer out of the gate
kernel: MetaSchedule cannot tile the fused kernel, so the layer ran on TVM's default
schedule (mnist 256x2 prop_1_0.05 at batch 1024: about 3 ms of a 6.6 ms call, where
the tuned layers took 3.2 ms); fusion only pays at small batches (kernel launches)."""
MIN_COUNT_OPSET = 13  # ReduceSum takes its axes as an input from opset 13 on
MAX_COUNT_OPSET = 17  # ReduceMin takes them as an attribute up to opset 17


@dataclass
class IOSpec:
    name: str
    sample_shape: tuple[int, ...]
    has_batch: bool
    dtype: str = "float32"

    def shape(self, batch: int | None) -> list[int | str]:
        if not self.has_batch:
            return list(self.sample_shape)
        return [BATCH_PARAM if batch is None else batch, *self.sample_shape]

    def to_json(self, batch: int | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": self.shape(batch),
            "sample_shape": list(self.sample_shape),
            "has_batch": self.has_batch,
            "dtype": self.dtype,
        }


@dataclass
class Lowered:
    executable: Any = field(repr=False)  # tvm.relax.VMExecutable
    target: TargetInfo
    batch: int | None
    input: IOSpec
    outputs: list[IOSpec]  # the model output, then (gated) the ungated output and the counts
    gate_nodes: int
    compile_seconds: float
    tuning: tuning.TuneReport | None = None
    cuda_source: str | None = field(default=None, repr=False)
    link_error: str | None = None  # set by export when the cross linker is missing
    nvcc: dict[str, Any] | None = None  # set by export for cuda

    @property
    def gated(self) -> bool:
        return len(self.outputs) > 1

    @property
    def counted(self) -> bool:
        """The library counts gate firings itself (rows after the two outputs)."""
        return len(self.outputs) > 2

    def load(self) -> CompiledModel:
        """Run the library in this process (llvm target only)."""
        import tvm

        if self.target.name != "llvm":
            raise RelugateError(f"a {self.target.name} library cannot run on this host")
        spec = self.input
        return CompiledModel(
            self.executable.mod,
            tvm.cpu(),
            spec.sample_shape,
            self.batch,
            spec.has_batch,
            packed=self.gated,
            counts=self.counted,
        )

    def export(self, out_dir: Path) -> list[str]:
        """Write the library (and CUDA source) into ``out_dir``; return the file names."""
        if self.target.name == "aarch64":
            return [self._export_cross(out_dir)]
        self.executable.export_library(str(out_dir / "model.so"))
        if self.target.name != "cuda" or self.cuda_source is None:
            return ["model.so"]
        (out_dir / "model.cu").write_text(self.cuda_source)
        self.nvcc = compile_cuda_source(out_dir / "model.cu", self.target.cuda_arch or "sm_80")
        names = ["model.so", "model.cu"]
        return [*names, "model.fatbin"] if self.nvcc.get("ok") else names

    def _export_cross(self, out_dir: Path) -> str:
        gcc = CROSS_GCC["aarch64"]
        if shutil.which(gcc):
            from tvm.support import cc

            fcompile = cc.cross_compiler(gcc)
            self.executable.export_library(str(out_dir / "model.so"), fcompile=fcompile)
            return "model.so"
        # host gcc would fail with "Relocations in generic ELF (EM: 183)": keep the objects
        self.executable.export_library(str(out_dir / "model.tar"))
        self.link_error = (
            f"cross linker {gcc} not found (apt-get install gcc-aarch64-linux-gnu); wrote the "
            "aarch64 objects as model.tar: link them on the board with "
            "gcc -shared -o model.so *.o"
        )
        return "model.tar"


# -- ONNX preparation ---------------------------------------------------------


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value.type.tensor_type.shape.dim
    ]


def _spec(value: onnx.ValueInfoProto) -> IOSpec:
    dims = _dims(value)
    if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise UnsupportedModel(f"tensor {value.name!r} is not float32")
    has_batch = len(dims) >= 2 and (isinstance(dims[0], str) or dims[0] == 1)
    sample = dims[1:] if has_batch else dims
    if not all(isinstance(d, int) and d > 0 for d in sample):
        raise UnsupportedModel(f"tensor {value.name!r} has a symbolic non-batch axis: {dims}")
    return IOSpec(value.name, tuple(int(d) for d in sample), has_batch)


def _set_shape(value: onnx.ValueInfoProto, shape: list[int | str]) -> None:
    value.type.tensor_type.shape.Clear()
    for d in shape:
        dim = value.type.tensor_type.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def prepare(
    model: onnx.ModelProto, batch: int | None, *, counts: bool = True
) -> tuple[onnx.ModelProto, list[IOSpec]]:
    """A copy of ``model`` with the batch axis set, and the ungated output exposed (with
    ``counts``, and a batch axis, followed by the gate-firing counts)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedModel("TVM lowering supports models with one input and one output")
    del graph.input[:]
    graph.input.extend(inputs)  # old exporters list weights as inputs too (ACAS Xu)
    del graph.value_info[:]  # shapes inferred for another batch size would conflict
    model.ir_version = max(model.ir_version, 4)  # IR >= 4: weights need not be inputs
    specs = [_spec(inputs[0]), _spec(graph.output[0])]
    if batch is not None and not specs[0].has_batch and batch != 1:
        raise UnsupportedModel(f"input {specs[0].name!r} has no batch axis; use batch=1")
    ungated = specs[1].name + UNGATED_SUFFIX
    _set_shape(graph.input[0], specs[0].shape(batch))
    _set_shape(graph.output[0], specs[1].shape(batch))
    if any(n.name.startswith(GATE_PREFIX) for n in graph.node) and any(
        ungated in n.output for n in graph.node
    ):
        specs.append(IOSpec(ungated, specs[1].sample_shape, specs[1].has_batch))
        opset = _opset(model)
        counts = counts and specs[1].has_batch and MIN_COUNT_OPSET <= opset <= MAX_COUNT_OPSET
        if counts:
            sample = (2, *specs[1].sample_shape)
            specs.append(IOSpec(specs[1].name + COUNTS_SUFFIX, sample, has_batch=False))
        _pack_outputs(graph, specs[1], ungated, batch, counts)
    return model, specs


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _pack_outputs(
    graph: onnx.GraphProto, out: IOSpec, ungated: str, batch: int | None, counts: bool
) -> None:
    """Make the library's one output ``concat([out, ungated(, counts)], axis=0)``.

    One output tensor (instead of two) lets the gate ops fuse into the last layer's
    kernel (``gate_fusion``: a tensor that leaves the function ends a fused group);
    stacking on the leading axis keeps both halves contiguous, so ``Executor`` splits
    it into views without copying."""
    shape = out.shape(batch)
    if not shape:
        raise UnsupportedModel(f"gated output {out.name!r} must have at least one axis")
    packed = out.name + PACKED_SUFFIX
    parts = [out.name, ungated]
    if counts:
        parts += _count_nodes(graph, out, ungated)
    graph.node.append(
        helper.make_node("Concat", parts, [packed], name=GATE_PREFIX + "pack", axis=0)
    )
    value = graph.output[0]
    value.name = packed
    first = shape[0]
    rows = f"2*{first}" if isinstance(first, str) else 2 * first
    if counts:
        rows = f"{rows}+2" if isinstance(rows, str) else rows + 2
    _set_shape(value, [rows, *shape[1:]])


def _count_nodes(graph: onnx.GraphProto, out: IOSpec, ungated: str) -> list[str]:
    """Nodes counting, over the batch, the inputs a gate left UNCHANGED: per output
    element (shape ``(1, *sample)``) and in all (the same shape, every element the
    count); the runtime subtracts them from the batch size.

    Counting equal values takes one op fewer per element than counting changed ones
    (no ``Not``, no clip of per-row sums to 1: ``ReduceMin`` of 0/1 is the row's "all
    equal"), which is most of the counting's cost at batch 1.  Float32 sums of 0/1
    values: exact below 2**24 inputs per call.  Equal, like numpy's ``==``, says 0.0
    equals -0.0 and NaN differs from itself."""
    rank = 1 + len(out.sample_shape)
    name = GATE_PREFIX + "count/"

    def const(key: str, value: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name + key))
        return name + key

    def node(op: str, key: str, inputs: list[str], **attrs: Any) -> str:
        graph.node.append(helper.make_node(op, inputs, [name + key], name=name + key, **attrs))
        return name + key

    same = node("Cast", "same", [node("Equal", "equal", [out.name, ungated])], to=TensorProto.FLOAT)
    batch_axis = const("batch_axis", np.array([0], np.int64))
    by_output = node("ReduceSum", "by_output", [same, batch_axis], keepdims=1)
    if rank > 1:  # ReduceMin takes its axes as an attribute up to opset 17
        all_same = node("ReduceMin", "all_same", [same], axes=list(range(1, rank)), keepdims=1)
    else:
        all_same = same
    inputs = node("ReduceSum", "inputs", [all_same, batch_axis], keepdims=1)
    zeros = const("zeros", np.zeros((1, *out.sample_shape), np.float32))
    return [by_output, node("Add", "inputs_spread", [inputs, zeros])]


def gate_node_count(model: onnx.ModelProto) -> int:
    return sum(n.name.startswith(GATE_PREFIX) for n in model.graph.node)


# -- lowering -----------------------------------------------------------------


def import_relax(
    model: onnx.ModelProto, batch: int | None, counts: bool = True
) -> tuple[Any, list[IOSpec]]:
    from tvm.relax.frontend.onnx import from_onnx

    prepared, specs = prepare(model, batch, counts=counts)
    try:
        with warnings.catch_warnings():  # checker and name-sanitizing chatter
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(prepared, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises anything from ValueError to TVMError
        hint = " (does the graph fix the batch size, e.g. a Reshape to [1, ...]?)"
        raise UnsupportedModel(
            f"TVM cannot import the model: {exc}{hint if batch else ''}"
        ) from exc
    return mod, specs


def lower(
    onnx_model: onnx.ModelProto,
    target: str = "llvm",
    batch: int | None = None,
    tune_seconds: float = 0,
    tuning_db: Path | None = None,
    *,
    mcpu: str | None = None,
    cuda_arch: str = "sm_80",
    num_cores: int = 1,
    prefuse: bool | None = None,
    gate_counts: bool = True,
) -> Lowered:
    """Compile ``onnx_model`` for ``target`` (``llvm`` | ``aarch64`` | ``cuda``).

    ``batch=None`` compiles a symbolic batch axis (any batch size at run time);
    an int fixes it (MetaSchedule tunes static shapes only).  ``tune_seconds > 0``
    tunes for about that long into ``tuning_db`` (a folder, reused across runs);
    with ``tune_seconds=0`` an existing ``tuning_db`` is applied without tuning.
    ``prefuse``: run ``gate_fusion.fuse_with_gates`` first (default: for gated models
    on CPU targets, except tuned libraries for batches of ``PREFUSE_MAX_TUNED_BATCH``
    or more; benchmarks force it to compare like with like).  ``gate_counts``:
    a gated library counts gate firings itself (see the module docstring).
    """
    import tvm

    if batch is not None and batch < 1:
        raise RelugateError(f"batch must be positive, got {batch}")
    if tune_seconds > 0 and batch is None:
        raise RelugateError("MetaSchedule tunes fixed shapes only: give a batch size to tune")
    if tune_seconds > 0 and tuning_db is None:
        raise RelugateError("tuning needs a database folder (tuning_db)")
    info = resolve_target(target, mcpu, cuda_arch, num_cores)
    mod, specs = import_relax(onnx_model, batch, gate_counts)
    start = time.monotonic()
    report = None
    if tune_seconds > 0 and target != "llvm":  # candidates run where measured (no RPC here)
        raise RelugateError("tuning is implemented for the host CPU (target llvm) only")
    use_db = tuning_db is not None and (tune_seconds > 0 or tuning_db.is_dir())
    tuned = use_db and batch is not None and target == "llvm"
    if prefuse is None:  # gated models on CPU: the gates join the last layer's kernel
        prefuse = len(specs) > 2 and info.target.kind.name == "llvm"
        prefuse = prefuse and not (tuned and (batch or 1) >= PREFUSE_MAX_TUNED_BATCH)
    if prefuse:
        mod = fuse_with_gates(mod, info.target)
    if tuned and tuning_db is not None:
        mod, report = tuning.tune(mod, info.target, tune_seconds, tuning_db)
    executable = tvm.compile(mod, target=info.target)
    lowered = Lowered(
        executable=executable,
        target=info,
        batch=batch,
        input=specs[0],
        outputs=specs[1:],
        gate_nodes=gate_node_count(onnx_model),
        compile_seconds=round(time.monotonic() - start, 3),
        tuning=report,
    )
    if target == "cuda":
        lowered.cuda_source = cuda_source(executable)
    return lowered


def library_objects(path: Path) -> list[str]:
    """Member names of an exported ``.tar`` library (the cross-compiled objects)."""
    with tarfile.open(path) as tar:
        return tar.getnames()
