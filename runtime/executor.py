"""The lean call path into a compiled Relax VM: numpy in, numpy out, little in between.

Converting arrays dominated small calls (``tvm.runtime.tensor(x)`` and
``.numpy()`` cost more than the ACAS Xu kernel itself), so each thread keeps
its own VM and, per batch size, a preallocated input tensor with a numpy view
of its memory: a call is one ``np.copyto`` into that view, one VM call, and
zero-copy numpy views (DLPack) of the outputs the VM allocated for this call.

A Relax VM keeps per-call state, so it is not shared between threads; the
loaded library (code and weights) is.  Needs only numpy and the TVM runtime.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

MAX_CACHED_BATCHES = 8
"""Preallocated input tensors kept per thread (one per batch size, least recent dropped)."""


class Executor:
    """Runs ``main`` of a Relax executable on float32 batches ``(n, *sample_shape)``.

    ``batch`` is the library's fixed batch size, or ``None`` when it was
    compiled with a symbolic batch axis.  A fixed-batch library runs larger
    batches in chunks (the last one padded by repeating its final row).  A
    model without a batch axis (``has_batch=False``) runs row by row.
    ``packed``: the library returns one tensor holding two outputs one after the
    other on its leading axis (a gated model: the output, then the ungated one);
    ``run_all`` splits it into two views.  ``counts``: two more rows follow, the
    library's count of inputs no gate changed (``backends.tvm._count_nodes``),
    returned as a third view; batches run in chunks (a fixed batch size) return
    no counts, since the padding rows would be counted.
    """

    def __init__(
        self,
        module: Any,
        device: Any,
        sample_shape: tuple[int, ...],
        batch: int | None,
        has_batch: bool = True,
        packed: bool = False,
        counts: bool = False,
    ) -> None:
        self.module = module
        self.device = device
        self.sample_shape = tuple(sample_shape)
        self.batch = batch if has_batch else 1
        self.has_batch = has_batch
        self.packed = packed
        self.counts = packed and counts and has_batch
        self._local = threading.local()
        self._on_cpu = int(device.dlpack_device_type()) == 1  # kDLCPU

    # -- per-thread state -------------------------------------------------
    def _state(self) -> tuple[Any, OrderedDict[int, tuple[Any, np.ndarray | None]]]:
        local = self._local
        if not hasattr(local, "main"):
            from tvm.runtime.vm import VirtualMachine

            local.vm = VirtualMachine(self.module, self.device)
            local.main = local.vm["main"]
            local.buffers = OrderedDict()
        return local.main, local.buffers

    def _buffer(
        self, buffers: OrderedDict[int, tuple[Any, np.ndarray | None]], n: int
    ) -> tuple[Any, np.ndarray | None]:
        entry = buffers.get(n)
        if entry is not None:
            buffers.move_to_end(n)
            return entry
        import tvm

        shape = (n, *self.sample_shape) if self.has_batch else self.sample_shape
        tensor = tvm.runtime.empty(shape, "float32", self.device)
        view = np.from_dlpack(tensor) if self._on_cpu else None
        buffers[n] = (tensor, view)
        if len(buffers) > MAX_CACHED_BATCHES:
            buffers.popitem(last=False)
        return tensor, view

    # -- calls ------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model output for ``batch`` (float32, C-contiguous, leading axis n)."""
        return self.run_all(batch)[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """All outputs of the library (gated models: the output, the ungated one, and
        when the library counts firings, the counts)."""
        n = len(batch)
        if self.batch is None or n == self.batch:
            return self._call(batch)
        step = self.batch
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            if len(chunk) < step:
                pad = np.repeat(chunk[-1:], step - len(chunk), axis=0)
                chunk = np.concatenate([chunk, pad])
            parts.append([o.copy() for o in self._call(chunk)[:2]])
        return [np.concatenate([p[i] for p in parts])[:n] for i in range(len(parts[0]))]

    def _call(self, batch: np.ndarray) -> list[np.ndarray]:
        main, buffers = self._state()
        tensor, view = self._buffer(buffers, len(batch))
        if not self.has_batch:
            batch = batch.reshape(self.sample_shape)
        if view is not None:
            np.copyto(view, batch, casting="no")
        else:
            tensor.copyfrom(batch)
        result = main(tensor)
        if self.packed:  # one tensor: [output, ungated(, 2 rows of counts)] on axis 0
            both = self._to_numpy(result)
            half = (len(both) - 2) // 2 if self.counts else len(both) // 2
            outputs = [both[:half], both[half : 2 * half]]
            if self.counts:
                outputs.append(both[2 * half :])
        elif _is_tuple(result):
            outputs = [self._to_numpy(o) for o in result]
        else:
            outputs = [self._to_numpy(result)]
        return outputs if self.has_batch else [o[np.newaxis] for o in outputs]

    def _to_numpy(self, tensor: Any) -> np.ndarray:
        if self._on_cpu:
            return np.from_dlpack(tensor)  # zero copy: the VM allocated it for this call
        return np.asarray(tensor.numpy())


def _is_tuple(value: Any) -> bool:
    return not hasattr(value, "__dlpack__")
