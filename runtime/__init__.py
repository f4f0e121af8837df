"""Torch-free inference: pre/post-processing and engine runners (numpy + TensorRT / ONNX Runtime)."""
