"""Publish a directory or a file all at once: write it under a temporary name beside its target,
then rename it into place, so a reader never sees a half-written dataset, evaluation or config."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary directory; when the block succeeds it replaces `out`.

    An existing `out` is only replaced when `overwrite` is true, and only after the new one is
    complete; on any error the temporary directory is removed and `out` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"output directory {out} appeared while it was being written; not replacing it")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file whole: to a temporary name beside it, then renamed over it."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
