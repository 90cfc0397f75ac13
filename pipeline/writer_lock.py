"""One writer per pipeline root: `ich run` and `ich watch` hold `<pipeline_root>/writer.lock` (flock) while they
write to it, so that two runs never share a metadata store, a decision log or a serving folder (and `ich serve`
holds its spool's the same way). The system
releases the lock when its process dies, so a crash leaves nothing to clean up."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

WRITER_LOCK = "writer.lock"


class PipelineRootLocked(RuntimeError):
    """Another process writes to the pipeline root."""


class PipelineRootUnwritable(RuntimeError):
    """The pipeline root cannot be made or written (a file in its path, a read-only or full file system)."""


@contextlib.contextmanager
def pipeline_root_lock(pipeline_root: str | os.PathLike, holder: str, what: str = "pipeline root") -> Iterator[Path]:
    """Exclusive while `holder` (e.g. "ich watch") writes to the pipeline root (or to `what` else: `ich serve`'s
    spool); a second writer gets PipelineRootLocked naming the first one's command and pid."""
    root = Path(pipeline_root)
    path = root / WRITER_LOCK
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_file = open(path, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as error:
        raise PipelineRootUnwritable(f"cannot write to the {what} {root}: {error.strerror} "
                                     f"({error.filename})") from None
    with lock_file as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise PipelineRootLocked(f"{who} is writing to {root} ({path} is locked); one writer per {what}") from None
        f.truncate(0)
        f.write(f"{holder} (pid {os.getpid()})")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(root: str | os.PathLike) -> str | None:
    """Who holds `<root>/writer.lock` now ("ich serve (pid 12)"), or None when no living process does."""
    path = Path(root) / WRITER_LOCK
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
        return None
