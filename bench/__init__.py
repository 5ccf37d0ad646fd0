"""Speed and learning benches (see README, "Speed benches").

OpenMP's default busy-wait policy makes a 2-thread job crawl on a shared CPU: every parallel op
waits at a barrier for the thread whose core another process holds, while the waiting thread
spins on the core the other one needs (measured here: a tiny training step 20 s -> 3.5 s under
load). The benches therefore default to OMP_WAIT_POLICY=PASSIVE; it must be set before torch is
imported, which this package does first. Export OMP_WAIT_POLICY=ACTIVE to override.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
