"""A device tensor read on the host without draining the device's queue.

`start(t)` queues a copy of `t` into pinned host memory and records an event after it; `get()`
waits for that event only. Started right after the step that produced `t` and read at the next
step, the wait ends while the device is still busy with the work queued after the copy (backward's
tail, the optimizer, the EMA), so the device never runs dry. On CPU the copy is immediate."""
from __future__ import annotations

import torch


class HostCopy:
    def __init__(self):
        self._host: torch.Tensor | None = None
        self._event = None

    def start(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = tensor.detach().clone(), None

    @property
    def pending(self) -> bool:
        return self._host is not None

    def get(self) -> torch.Tensor:
        """The copied tensor (CPU); waits for the copy's event, not for the whole queue."""
        if self._host is None:
            raise RuntimeError("HostCopy.get() before start()")
        if self._event is not None:
            self._event.synchronize()
        host, self._host, self._event = self._host, None, None
        return host
