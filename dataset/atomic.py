"""Publish a directory or a file all at once: write it under a temporary name beside its target,
then rename it into place, so a reader never sees a half-written dataset, evaluation or config."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def publish_directory(tmp: str | os.PathLike, out: str | os.PathLike, overwrite: bool) -> None:
    """Rename the complete directory `tmp` to `out`. An existing `out` is replaced only when
    `overwrite` is true: it is first moved aside, so until the new one is in place the old one
    is still there (under a hidden name) and is put back if the rename fails."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        os.rename(tmp, out)
        return
    if not overwrite:
        raise FileExistsError(f"output directory {out} appeared while it was being written; not replacing it")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary directory; when the block succeeds it replaces `out`.

    An existing `out` is only replaced when `overwrite` is true, and only after the new one is
    complete; on any error the temporary directory is removed and `out` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        publish_directory(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Write a file whole: `write(tmp_path)` writes it under a temporary name beside `path`, which
    is then renamed over `path` (a failed write leaves `path` as it was and no temporary file)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file whole (see atomic_write)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
