"""Training -> artifacts: ONNX with the front-end inside, TorchScript and torch.export, parity checks."""
