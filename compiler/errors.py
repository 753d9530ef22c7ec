"""The one error hierarchy of relugate.

Every error a user can cause is a ``RelugateError`` with a message that says
what is wrong and where (node name, spec line, file).  The CLI maps each
class to its exit code; anything else escaping is an internal error.
"""

from __future__ import annotations


class RelugateError(Exception):
    """Base class: an error the user can act on."""

    exit_code = 3
    kind = "error"


class ModelError(RelugateError):
    """The ONNX file is unreadable, malformed or unsafe to load."""

    kind = "bad model"


class UnsupportedModel(RelugateError):
    """The model is valid ONNX but uses something relugate cannot compile."""

    kind = "unsupported model"

    def __init__(self, message: str, nodes: list[tuple[str, str]] | None = None) -> None:
        self.nodes = list(nodes or [])
        if self.nodes:
            listed = "\n".join(f"  - {name!r} ({op})" for name, op in self.nodes)
            message = f"{message}\n{listed}"
        super().__init__(message)


class BadSpec(RelugateError):
    """The property (VNN-LIB file or input box) is malformed or inconsistent."""

    kind = "bad spec"


class ConfigError(RelugateError):
    """A project config file (``relugate.toml`` or ``[tool.relugate]``) is malformed."""

    kind = "bad config"


class UsageError(RelugateError):
    """Options that contradict each other or take no such value (exit code 2)."""

    exit_code = 2
    kind = "usage error"


class BadInput(RelugateError):
    """A runtime input has the wrong shape or dtype, or holds NaN/Inf."""

    kind = "bad input"


class ProofFailed(RelugateError):
    """A property could not be guaranteed (neither proved nor repaired)."""

    exit_code = 4
    kind = "not guaranteed"


class BundleError(RelugateError):
    """An output folder or bundle cannot be written, or a bundle fails its checks."""

    exit_code = 5
    kind = "bundle error"


class EquivalenceError(RelugateError):
    """--verify-each found a pass whose output differs from its input."""

    exit_code = 70
    kind = "pass broke equivalence"


INTERNAL_ERROR_EXIT = 70
