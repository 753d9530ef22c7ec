"""Fuse the output gates into the kernel of the network's last layer (CPU targets).

A gated library computes the ungated output ``<out>_ungated``, then a few
small ops per gate (a Gemm, a ReduceMax, a Min; see ``compiler/gates_onnx``),
and returns both packed in one tensor.
TVM's ``FuseOps`` groups ops by pattern kind and will not put a reduction or
a second matmul behind a matmul, so each gate op became its own kernel: at
batch 1 a kernel call with its allocations costs about as much as a small
layer, and one ACAS Xu gate added 2-3 us to a 13 us call (18%).

``relabel_gate_tail`` marks every TIR function that the gate ops call
(the bindings after the one that defines ``<out>_ungated``, up to the packing
concatenation) as element-wise
(``op_pattern`` 0), on private copies so that the network's own ops keep
their kinds.  ``FuseOps`` then groups the gate with the last layer and
``FuseTIR`` emits one kernel that writes the packed output.  (With two
library outputs this fails: a tensor that leaves the function ends its group.)  Fusion only decides
which TIR blocks share a function; every block computes what it computed
before, in the same order (the bundle tests compare outputs with
onnxruntime on the final ONNX).

Applied to gated models on ``llvm`` targets (host and aarch64).  Ungated
models keep ``tvm.compile``'s own pipeline: running these passes first made an
ungated ACAS Xu library faster at batch 1 but about 1.5x slower at batch 1024
(symbolic batch; measured with ``time_evaluator``, cause not found).  CUDA keeps
TVM's default fusion, whose GPU schedules (dlight) expect the usual groups.
"""

from __future__ import annotations

from typing import Any

ELEMWISE = 0
"""``OpPatternKind.kElemWise``."""
SUFFIX = "_relugate_gate"


def _ungated_var(func: Any) -> Any | None:
    """The variable holding the ungated output: the second operand of the concatenation
    that packs the library's output (``tvm.prepare``), if ``main`` ends with one.  The
    firing counts (``tvm._count_nodes``) come after it, so they join the gate tail."""
    import tvm
    from tvm import relax

    ret = func.body.body
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for block in func.body.blocks:
        for binding in block.bindings:
            if not binding.var.same_as(ret):
                continue
            value = binding.value
            if (
                isinstance(value, relax.Call)
                and value.op.same_as(call_tir)
                and value.args[0].name_hint.startswith("concatenate")
                and isinstance(value.args[1], relax.Tuple)
                and len(value.args[1].fields) in (2, 4)  # with the firing counts: 4
            ):
                field = value.args[1].fields[1]
                return field if isinstance(field, relax.Var) else None
    return None


def _elementwise_copy(builder: Any, mod: Any, gvar: Any, copies: dict[str, Any]) -> Any:
    """A copy of the TIR function ``gvar`` marked element-wise (one copy per function)."""
    name = gvar.name_hint + SUFFIX
    if name not in copies:
        func = mod[gvar].with_attr("op_pattern", ELEMWISE).with_attr("global_symbol", name)
        copies[name] = builder.add_func(func, name)
    return copies[name]


def relabel_gate_tail(mod: Any) -> Any:
    """``mod`` (after LegalizeOps and AnnotateTIROpPattern) with the gate ops marked
    element-wise; unchanged when ``main`` does not end by packing an ungated output."""
    import tvm
    from tvm import relax

    func = mod["main"]
    ungated = _ungated_var(func)
    if ungated is None:
        return mod
    call_tir = tvm.ir.Op.get("relax.call_tir")
    builder = relax.BlockBuilder(mod)
    copies: dict[str, Any] = {}
    blocks = []
    seen = False
    for block in func.body.blocks:
        bindings = []
        for binding in block.bindings:
            value = binding.value
            if seen and isinstance(value, relax.Call) and value.op.same_as(call_tir):
                target = _elementwise_copy(builder, mod, value.args[0], copies)
                value = relax.Call(value.op, [target, *value.args[1:]], value.attrs, value.ty_args)
                binding = relax.VarBinding(binding.var, value)
            bindings.append(binding)
            seen = seen or binding.var.same_as(ungated)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    if not copies:
        return mod
    body = relax.SeqExpr(blocks, func.body.body)
    main = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    builder.update_func(mod.get_global_var("main"), main)
    return builder.get()


def fuse_with_gates(mod: Any, target: Any) -> Any:
    """Legalize and fuse ``mod`` as TVM's CPU pipeline does, with the gate tail fused
    into the last layer.  Later passes (tuning, ``tvm.compile``) find it fused."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="RelabelGateTail")
    def relabel(m: Any, _ctx: Any) -> Any:
        return relabel_gate_tail(m)

    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relabel,
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
            ]
        )(mod)
