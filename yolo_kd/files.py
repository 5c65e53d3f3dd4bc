"""Writing files so that a kill never leaves half a file under its final name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path``; what the block writes there is moved into place when the block succeeds.

    The temporary name carries the process id, so DDP ranks writing the same file never share one. It is removed
    when the block fails: nothing half-written is left under either name.

    Args:
        path: The final file (its folder is created).

    Yields:
        The temporary path to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only there when the write failed: this process's own temporary file


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` under a temporary name beside ``path``, then move it into place in one step.

    Args:
        path: The final file.
        text: Its content.

    Returns:
        The path written.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
