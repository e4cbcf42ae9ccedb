"""scalelab: train transformer text classifiers with DDP and explain how training scales."""

__version__ = "0.1.0"
