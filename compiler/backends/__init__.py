"""Code generation backends: the reduced (and gated) ONNX model to a compiled library.

``relugate.compiler.backends.tvm.lower`` is the one backend (TVM Relax);
importing this package does not import TVM.
"""
