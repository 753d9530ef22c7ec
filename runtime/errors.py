"""The runtime's errors: the compiler's classes (``compiler/errors.py`` imports nothing),
plus ``OutOfDomain`` for inputs the ``reject`` policy turns away."""

from __future__ import annotations

from relugate.compiler.errors import BadInput, BundleError, RelugateError


class OutOfDomain(BadInput):
    """An input lies outside the bundle's domain and the policy is ``reject``."""

    kind = "out of domain"


__all__ = ["BadInput", "BundleError", "OutOfDomain", "RelugateError"]
