"""relugate: a compiler for ReLU neural networks.

The source lives in the top-level folders ``compiler/``, ``passes/`` and
``runtime/``; ``relugate/`` links them in as ``relugate.compiler``,
``relugate.passes`` and ``relugate.runtime``.
"""

__version__ = "0.1.0"
