"""Launching scalelab runs: local multi-process sweeps through torchrun (`scalelab.launch.local`)."""
