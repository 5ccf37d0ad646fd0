"""One clear line for the configuration and input errors the project raises itself.

Hydra wraps an exception from the task function in 20-25 lines of traceback whose useful line is
the last. The entry points run their work inside `report_user_errors()`: an error of one of
USER_ERROR_TYPES raised by a `raise` statement of this repository's own code (the deliberate checks:
a missing dataset, an unknown encoder, a refused resume, ...) is printed as `error: <message>`
and the process exits with status 2. Errors raised inside torch, numpy or any other library, and
every other exception type, keep their full traceback: those are bugs, not input. Set
HYDRA_FULL_ERROR=1 (or ETRM_DEBUG=1) to get the traceback of every error.
"""
from __future__ import annotations

import linecache
import os
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_ERROR_TYPES = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, RuntimeError)
EXIT_STATUS = 2
_LIBRARY_DIRS = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                                        sysconfig.get_paths()["stdlib"]})


def raised_by_project(exc: BaseException) -> bool:
    """True when the innermost frame of the traceback is a `raise` statement in a file of this
    repository: a deliberate check, not a failure inside a library call (numpy's C code raising
    from a line of ours does not count)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = str(Path(tb.tb_frame.f_code.co_filename).resolve())
    in_repo = filename.startswith(str(REPO) + os.sep) and not filename.startswith(_LIBRARY_DIRS)
    return in_repo and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def debug_requested() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HYDRA_FULL_ERROR", "ETRM_DEBUG"))


@contextmanager
def report_user_errors():
    try:
        yield
    except USER_ERROR_TYPES as exc:
        if debug_requested() or not raised_by_project(exc):
            raise
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}error: {exc}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None
