"""Checks of the user's input that run before anything loads or is written, each failing with one line.

Every refusal is a ``KDConfigError`` naming the key, the value and what to do; the CLI prints it as one line.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import KDConfigError


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_yaml(key: str, path: str | Path) -> Any:
    """Parse a YAML file the user named.

    Args:
        key: The key the path was given under (named in the error).
        path: The file.

    Returns:
        The parsed content.
    """
    p = Path(path)
    if not p.is_file():
        raise KDConfigError(f"{key}={path}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or _first_line(e)
        raise KDConfigError(f"{key}={path}: malformed YAML ({problem}{where}); fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KDConfigError(f"{key}={path}: cannot be read as YAML ({_first_line(e)})") from None


def check_yaml_keys(kwargs: dict[str, Any], keys: Iterable[str]) -> None:
    """Parse each of ``keys`` that names an existing .yaml/.yml file, so malformed YAML is refused up front.

    Args:
        kwargs: The command's key=value pairs.
        keys: The keys whose value may be a YAML file (e.g. ``kd``, ``kd_class_map``).
    """
    for key in keys:
        value = kwargs.get(key)
        if isinstance(value, (str, Path)) and str(value).endswith((".yaml", ".yml")) and Path(value).is_file():
            read_yaml(key, value)


def read_checkpoint(key: str, path: str | Path) -> dict[str, Any]:
    """Load an Ultralytics checkpoint as its dict (on the CPU), or refuse a file that is not one.

    Args:
        key: The key the path was given under.
        path: The .pt file.

    Returns:
        The checkpoint dict (with ``model`` or ``ema``).
    """
    from .checkpoint import load_checkpoint_file  # the one loader (Ultralytics' own, its safe-load setting honoured)

    p = Path(path)
    if not p.is_file():
        raise KDConfigError(f"{key}={path}: no such checkpoint (yolo-kd downloads nothing; give a local .pt file)")
    try:
        ckpt = load_checkpoint_file(p)
    except Exception as e:  # pickle/zip errors of truncated or foreign files
        raise KDConfigError(f"{key}={path}: not an Ultralytics checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or (ckpt.get("ema") or ckpt.get("model")) is None:
        raise KDConfigError(f"{key}={path}: not an Ultralytics checkpoint (no model in it)")
    return ckpt


def check_keys(command: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse keys a command does not take, suggesting the closest valid key (a misspelling is the usual cause).

    Args:
        command: The command name, for the message.
        given: The keys the user gave.
        allowed: The keys the command takes.
    """
    allowed = sorted(set(allowed))
    unknown = sorted(set(given) - set(allowed))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key}= (did you mean {close[0]}=?)" if close else f"{key}=")
    listed = ", ".join(allowed) if len(allowed) <= 30 else "see 'yolo-kd help'"
    raise KDConfigError(f"'{command}' does not take {', '.join(hints)}; valid keys: {listed}")


def check_writable(key: str, folder: str | Path) -> None:
    """Refuse an output folder this process cannot write in (or that is a file), before any file is written.

    The folder may not exist yet: then its nearest existing parent must be writable. The check creates and removes
    one empty temporary file, because permission bits do not tell (root ignores them; read-only mounts do not).

    Args:
        key: The key the folder was given under.
        folder: Where the command will write.
    """
    p = Path(folder).absolute()
    existing = next(q for q in (p, *p.parents) if q.exists())
    if not existing.is_dir():
        raise KDConfigError(f"{key}={folder}: {existing} is a file, not a folder; give a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".yolo_kd_probe_", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise KDConfigError(
            f"{key}={folder}: cannot write in {existing} ({e.strerror or _first_line(e)}); give a writable folder"
        ) from None
