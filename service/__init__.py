"""The serving half: loads an artifact, batches requests, runs ONNX Runtime. Never imports torch."""
