"""Serving (torch-free): Litestar app, dynamic batcher, ONNX Runtime sessions, lumen-serve, lumen-bench."""
