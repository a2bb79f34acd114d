"""The training engine: loop, metrics, checkpoints, run directory."""
