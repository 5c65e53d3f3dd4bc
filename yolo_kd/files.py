"""Writing files so that a kill never leaves half a file under its final name."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` under a temporary name beside ``path``, then move it into place in one step.

    Args:
        path: The final file.
        text: Its content.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write itself failed: this process's own temporary file
    return path
