"""Exports of a trained run: TorchScript, ``torch.export`` and ONNX files, checked against
the run's model, with a JSON sidecar — and loading them back for prediction.

In: a run directory. Out: an export file and its sidecar. Imports the engine's model files
(:mod:`..artifacts`); the CLI and :mod:`..inference` import it.
"""
