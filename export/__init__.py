"""Export of a trained prompt pack into one ONNX graph and TensorRT engines."""
