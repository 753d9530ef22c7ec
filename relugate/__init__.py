"""relugate: a compiler for ReLU neural networks.

The source lives in the top-level folders ``compiler/``, ``passes/`` and
``runtime/``; ``relugate/`` links them in as ``relugate.compiler``,
``relugate.passes`` and ``relugate.runtime``.

The Python API (``compiler/api.py``, ``compiler/project.py``) mirrors the
command line: ``relugate.compile(...)``, ``relugate.verify(...)`` and
``relugate.build(...)``.  It is imported on first use, so that
``import relugate.runtime`` stays light (no onnx, z3 or scipy).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "compile": "relugate.compiler.api",
    "verify": "relugate.compiler.api",
    "CompileOutcome": "relugate.compiler.api",
    "build": "relugate.compiler.project",
    "BuildOutcome": "relugate.compiler.project",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'relugate' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
