"""When the training loop stops early or checkpoints off its step schedule: a signal from the
scheduler, a checkpoint every `checkpoint_interval_minutes`, the `max_train_minutes` budget.

Slurm sends SIGTERM before it kills a job (preemption, scancel, the time limit; KillWait later
SIGKILL), and with `#SBATCH --signal=USR1@N` SIGUSR1 (or USR2) N seconds before the time limit.
The handler only records the signal. At every step boundary the ranks agree on one decision
with a single max-reduction of three CPU numbers on a gloo group (`distributed.control_max`: no
CUDA synchronisation, so it costs the step no host sync): any rank signalled -> all save a
complete checkpoint at this step and the process exits with EXIT_PREEMPTED; rank 0's clock
decides the time-based checkpoint and the training budget, so every rank acts at the same step.
"""
from __future__ import annotations

import signal
import threading
import time

from training.distributed import control_max

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry". A requeue wrapper
# (scripts/slurm/etrm.sbatch) requeues on it; the rerun resumes from the checkpoint just written.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


_previous: dict[int, object] = {}  # the handlers LoopControl replaced


def restore_signal_handlers() -> None:
    """Put back the handlers a LoopControl replaced (also after an exception: trainer.train)."""
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()


class Preempted(SystemExit):
    """Raised after the checkpoint a stop signal asked for: the process exits with EXIT_PREEMPTED."""

    def __init__(self, signum: int, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.signum, self.step = signum, step

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} at step {self.step} (checkpoint written), exit {EXIT_PREEMPTED}"


class LoopControl:
    """Install with `with LoopControl(...) as control:`; call `decide(train_seconds)` once per step."""

    def __init__(self, checkpoint_minutes: float | None, budget_minutes: float | None, is_main: bool):
        self.interval_s = float(checkpoint_minutes) * 60 if checkpoint_minutes else None
        self.budget_s = float(budget_minutes) * 60 if budget_minutes else None
        self.is_main = is_main
        self.signalled = 0
        self.last_save = time.monotonic()

    def _record(self, signum, frame) -> None:  # async-signal context: only set the flag
        self.signalled = signum

    def __enter__(self) -> "LoopControl":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                _previous.setdefault(sig, signal.signal(sig, self._record))
        return self

    def __exit__(self, *exc) -> None:
        restore_signal_handlers()

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def decide(self, train_seconds: float) -> tuple[int, bool, bool]:
        """Collective: (signal number any rank received or 0, time-based checkpoint due, training
        budget used up), the same on every rank."""
        own = [float(self.signalled), 0.0, 0.0]
        if self.is_main:
            own[1] = float(self.interval_s is not None and time.monotonic() - self.last_save >= self.interval_s)
            own[2] = float(self.budget_s is not None and train_seconds >= self.budget_s)
        sig, due, out = control_max(own)
        return int(sig), bool(due), bool(out)
