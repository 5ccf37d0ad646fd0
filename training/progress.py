"""Progress for long loops: a tqdm bar on an interactive terminal, plain log lines otherwise.

Redirected to a file (a job scheduler's log, `> run.log 2>&1`), a tqdm bar becomes one line of
thousands of carriage-return updates. When stderr is not a terminal the same progress goes out
as one ordinary log line every `interval_s` seconds (and at the end), which reads well in any log.
Only the rank that is given `enabled=True` (rank 0) shows anything.
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("etrm")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "step",
                 interval_s: float = 30.0, interactive: bool | None = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.enabled = bool(enabled)
        self.n = self.start_n = int(initial)
        self.interval_s = float(interval_s)
        self.postfix: dict[str, str] = {}
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
                    if self.enabled and interactive else None)
        self.t0 = self.last_log = time.perf_counter()

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last_log >= self.interval_s:
            self._log_line()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total} ({100.0 * self.n / max(self.total, 1):.0f}%)"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.2f} {self.unit}/s, elapsed {_duration(elapsed)}")
        if rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        return " | ".join(parts)

    def _log_line(self) -> None:
        self.last_log = time.perf_counter()
        log.info("%s", self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n > self.start_n:
            self._log_line()
