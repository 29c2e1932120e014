"""The PyTorch half: Electric model, noise models, NCE training, import and ONNX export."""
