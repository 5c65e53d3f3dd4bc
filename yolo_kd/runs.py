"""Train once, then reuse: a cached training run is reused only when it finished with the requested settings.

The demo's teacher and pretraining stages and the accuracy benchmark's pretraining stages all go through
``train_or_reuse``. A run passes for finished only when its ``best.pt`` carries Ultralytics' end-of-training mark (the
final step strips the optimizer and records epoch -1); a run killed earlier leaves a ``best.pt`` of some epoch that
must not pass for a finished model. A cached folder that may not be reused is left as it is: the new run trains in the
next free folder (``<name>_2``, ``<name>_3``, ...), so no run ever overwrites another one's files. With
``resume=True`` a killed run with the same settings is continued from its ``last.pt`` instead (Ultralytics'
``resume``): long pretraining stages then survive a kill, one session at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import KDConfigError
from .dataset import MANIFEST
from .inputs import read_checkpoint

# Settings a cached run must have been trained with (besides its model); each caller passes them all.
CHECKED = ("data", "epochs", "imgsz", "batch", "seed")
PATH_KEYS = ("model", "data")  # compared as files: the same file given by another spelling is the same setting


def _same(key: str, got: Any, value: Any) -> bool:
    if got == value:
        return True
    return key in PATH_KEYS and got is not None and Path(str(got)).resolve() == Path(str(value)).resolve()


def _mismatch(run_dir: str | Path, recorded: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """The first setting of ``want`` that the run's recorded train arguments differ in, in words; None when none."""
    for key, value in want.items():
        got = recorded.get(key)
        # Ultralytics' resume records model=<its own last.pt>; train_or_reuse resumes only after checking the model
        resumed = key == "model" and _same(key, got, Path(run_dir) / "weights" / "last.pt")
        if not (resumed or _same(key, got, value)):
            return f"it was trained with {key}={got}, not {value}"
    return None


def why_not_reuse(run_dir: str | Path, want: Mapping[str, Any]) -> str | None:
    """Why the run in ``run_dir`` may not be reused for ``want``; None when its ``weights/best.pt`` may.

    Args:
        run_dir: An Ultralytics run folder (``project/name``).
        want: The train arguments the run must have been trained with (e.g. ``model``, ``data``, ``epochs``).

    Returns:
        The reason in a few words, or None.
    """
    best = Path(run_dir) / "weights" / "best.pt"
    if not best.is_file():
        return "it has no weights/best.pt (its run stopped before the first epoch ended)"
    try:
        ckpt = read_checkpoint("cached run", best)
    except KDConfigError as e:
        return str(e)
    if ckpt.get("epoch") != -1 or ckpt.get("optimizer") is not None:
        done = int(ckpt.get("epoch") or 0) + 1
        return f"its run did not finish (stopped after epoch {done} of {want.get('epochs', '?')})"
    return _mismatch(run_dir, ckpt.get("train_args") or {}, want)


def resumable(run_dir: str | Path, want: Mapping[str, Any]) -> Path | None:
    """The ``last.pt`` of a killed run in ``run_dir`` that was trained with ``want``; None when there is none.

    Args:
        run_dir: An Ultralytics run folder (``project/name``).
        want: The train arguments the run must have been started with.

    Returns:
        The checkpoint to resume from, or None (no ``last.pt``, a finished run, or other settings).
    """
    last = Path(run_dir) / "weights" / "last.pt"
    if not last.is_file():
        return None
    try:
        ckpt = read_checkpoint("cached run", last)
    except KDConfigError:
        return None
    if ckpt.get("epoch") == -1 or ckpt.get("optimizer") is None:  # finished (or stripped): nothing to continue
        return None
    if int(ckpt.get("epoch") or 0) + 1 >= int(want.get("epochs") or 0):  # killed in its final evaluation
        return None  # Ultralytics refuses to resume a run with no epoch left: it trains afresh in another folder
    return last if _mismatch(run_dir, ckpt.get("train_args") or {}, want) is None else None


def train_or_reuse(model: str, name: str, what: str, resume: bool = False, **train_args: Any) -> tuple[str, str]:
    """``best.pt`` of a finished run of ``model`` with these settings: a cached one, or one trained now.

    Folders ``project/name``, ``project/name_2``, ... are tried in turn: the first whose run finished with ``model``
    and the ``CHECKED`` train arguments is reused; one that did not finish, or was trained otherwise, is left as it is
    and the log says why. With none reusable, ``model`` trains in the first free folder. With ``resume``, a folder
    holding a killed run with the same settings is continued instead (only one process may work on a cache at a
    time: two resuming the same folder would overwrite each other's checkpoints).

    Args:
        model: A model YAML or a parent checkpoint (``YOLO(model).train(...)``).
        name: The run's folder name (callers put what makes the run in it, so other settings get another folder).
        what: The run in a few words, for the log (e.g. ``teacher``).
        resume: Continue a killed run with these settings from its ``last.pt`` rather than train a new one.
        **train_args: Ultralytics train arguments; ``project`` (the folder of the cached runs) and every key of
            ``CHECKED`` are required.

    Returns:
        The checkpoint and how it was obtained: ``reused``, ``resumed`` or ``trained``.

    Raises:
        RuntimeError: The new run returned without finishing.
    """
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    # Ultralytics puts a relative project under its runs_dir setting (runs/detect/...): resolve it here, so the run
    # lands where this function then looks for it
    project = Path(train_args["project"]).resolve()
    want = {"model": model, **{k: train_args[k] for k in CHECKED}}
    folder, k = name, 1
    while (project / folder).exists():
        why = why_not_reuse(project / folder, want)
        best = project / folder / "weights" / "best.pt"
        if why is None:
            LOGGER.info(f"reusing cached {what} {best}: its run finished with these settings")
            return str(best), "reused"
        last = resumable(project / folder, want) if resume else None
        if last is not None:
            LOGGER.info(f"resuming cached {what} {last}: its run stopped early with these settings")
            # Ultralytics resumes with the checkpoint's arguments; where it runs is this call's (a stage killed on a
            # GPU may continue on the CPU)
            YOLO(str(last)).train(resume=True, **{k: train_args[k] for k in ("device", "workers") if k in train_args})
            return _finished(project / folder, want, what), "resumed"
        k += 1
        LOGGER.info(f"leaving cached {what} {project / folder} as it is ({why}); training in {name}_{k}")
        folder = f"{name}_{k}"
    if folder == name:
        LOGGER.info(f"no cached {what} for these settings: training one in {project / folder}")
    YOLO(model).train(**{**train_args, "project": str(project), "name": folder, "exist_ok": False})
    return _finished(project / folder, want, what), "trained"


def _finished(run_dir: Path, want: Mapping[str, Any], what: str) -> str:
    """``best.pt`` of the run that just returned in ``run_dir``; raise when it did not finish."""
    why = why_not_reuse(run_dir, want)
    if why is not None:
        raise RuntimeError(f"{what} in {run_dir}: training returned but {why}")
    return str(run_dir / "weights" / "best.pt")


def content_key(*parts: object) -> str:
    """A short hash of what makes a checkpoint: settings, and the bytes of any ``.pt`` file among them.

    Args:
        *parts: Settings (anything JSON can write) and checkpoint paths.

    Returns:
        Ten hex digits.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, Path)) and str(part).endswith(".pt") and Path(part).is_file():
            h.update(hashlib.sha256(Path(part).read_bytes()).digest())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:10]


def dataset_manifest(data: str | Path) -> str:
    """The record of what generated the dataset of data YAML ``data`` (its content, for ``content_key``).

    Args:
        data: A data YAML written by ``make_dataset``.

    Returns:
        The manifest's text.
    """
    return (Path(data).parent / Path(data).stem / MANIFEST).read_text()
