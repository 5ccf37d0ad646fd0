"""Training batches assembled off the main thread.

`Prefetcher(loader, depth, pin)` runs `next(loader)` on a worker thread, `depth` batches ahead,
optionally into pinned memory (pin only with CUDA: a copy from pinned memory with
non_blocking=True is queued, from pageable memory it is waited for). The main thread only takes
finished batches from a queue, so the assembly (numpy, which releases the GIL) overlaps the step.

Resumable state stays exact: `state_dict()` is the loader's state after the last batch handed
to the caller, not after the batches still waiting in the queue, so a checkpoint resumes at the
first batch the trainer has not consumed. `load_state_dict` drops the prefetched batches.
"""
from __future__ import annotations

import queue
import threading

import torch


class Prefetcher:
    def __init__(self, loader, depth: int = 2, pin: bool = False):
        if depth < 1:
            raise ValueError(f"Prefetcher depth must be >= 1, got {depth}")
        self.loader, self.depth, self.pin = loader, int(depth), bool(pin)
        self._consumed = loader.state_dict()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)

    def __getattr__(self, name):  # local_batch_size, samples_per_epoch, ... of the loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _work(self, stop: threading.Event, out: queue.Queue) -> None:
        while not stop.is_set():
            try:
                batch = next(self.loader)
                if self.pin:
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                item = (batch, self.loader.state_dict(), None)
            except BaseException as error:  # handed to the main thread, raised there
                item = (None, None, error)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, args=(self._stop, self._queue), daemon=True,
                                            name="etrm-prefetch")
            self._thread.start()
        batch, state, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        self._consumed = state
        return batch

    def state_dict(self) -> dict:
        """The loader's state after the batches handed out so far (prefetched ones excluded)."""
        return dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.loader.load_state_dict(state)
        self._consumed = self.loader.state_dict()

    def close(self) -> None:
        """Stop the worker and drop what it prefetched (the loader is left past them: load a state to reuse it)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._thread, self._stop, self._queue = None, threading.Event(), queue.Queue(maxsize=self.depth)
