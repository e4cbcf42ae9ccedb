"""Analysis layer: read run folders, compute scaling metrics, diagnose, predict and report.

Reads files only (numpy/matplotlib/yaml): it never imports torch or the trainer.
"""

from scalelab.analysis.collect import AnalysisError, Run, load_run, load_runs

__all__ = ["AnalysisError", "Run", "load_run", "load_runs"]
