"""Process defaults every entry point applies before torch is imported.

OpenMP's default busy-wait policy makes a 2-thread job crawl on a shared CPU: every parallel op
waits at a barrier for the thread whose core another process holds, while the waiting thread
spins on the core the other one needs. Measured on a loaded 2-core machine: the tiny run 6m44s ->
2m09s, evaluation 14 s -> 0.55 s per batch, pytest 92 s -> 32 s with OMP_WAIT_POLICY=PASSIVE.
The variable is read once, when torch's OpenMP runtime starts, so it must be set before
`import torch`. A value the user exported (e.g. ACTIVE on a dedicated machine) is kept.
"""
import os

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


apply()
