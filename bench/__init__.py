"""Speed and learning benches (docs/BENCHMARKS.md).

Importing this package applies the project's process defaults first (OMP_WAIT_POLICY=PASSIVE,
see training/env_defaults.py): they must be set before torch is imported.
"""
import training.env_defaults  # noqa: F401  (side effect: environment defaults)
