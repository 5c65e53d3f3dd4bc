"""Checkpoint files: the one loader, the KD record (read, write, strip), resume's lookup, atomic saves, results.csv.

yolo-kd's checkpoints are Ultralytics' own, plus one plain-data entry ``ckpt["kd"]`` (the record) that resume reads:
the KD config, the teacher's path and hash, an open-vocabulary teacher's prompts and vocabulary hash (never its
embeddings) and, in ``last.pt`` of an unfinished run, the connectors' state. The student inside stays a plain
Ultralytics model, and ``train_args`` stay pure Ultralytics keys.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .config import KDConfig, KDConfigError, kd_keys
from .files import atomic_path, write_text_atomic

KD_RECORD = "kd"  # checkpoint key holding yolo-kd's plain-data record
RECORD_FORMAT = "yolo-kd/1"
# Connector state keys written before MGD's generators became connectors: they sat inside the feature losses.
LEGACY_STATE_PREFIXES = {"feature_losses.": "generators."}


def load_checkpoint_file(path: str | Path) -> Any:
    """Load a checkpoint file as Ultralytics does, honouring its ``ULTRALYTICS_SAFE_LOAD`` setting.

    Ultralytics' loader maps old module paths and reports a damaged file as one clear error; with its safe-load
    setting on, only the known model classes are unpickled.

    Args:
        path: A ``.pt`` file on disk.

    Returns:
        The checkpoint (a dict for every checkpoint Ultralytics or yolo-kd writes).
    """
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(path))
    return ckpt


def load_model_file(path: str | Path) -> torch.nn.Module:
    """Load the model of an Ultralytics checkpoint file as Ultralytics does (fp32, CPU, safe-load setting honoured).

    Args:
        path: A ``.pt`` file on disk.

    Returns:
        The model (its EMA weights when the checkpoint has them).
    """
    from ultralytics.nn.tasks import load_checkpoint

    return load_checkpoint(path)[0]


def read_kd_record(path: str | Path) -> dict[str, Any] | None:
    """The yolo-kd record of a checkpoint file.

    Args:
        path: A ``.pt`` file.

    Returns:
        The record, or None for a checkpoint yolo-kd did not write.
    """
    ckpt = load_checkpoint_file(path)
    return ckpt.get(KD_RECORD) if isinstance(ckpt, dict) else None


def kd_record(
    cfg: KDConfig, teacher: str | None, teacher_sha256: str | None, state: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """The plain data resume needs.

    Args:
        cfg: The run's KD settings.
        teacher: The teacher's path.
        teacher_sha256: The teacher file's hash, so a resume can tell the file has changed.
        state: The connectors' state (``connector_state``), for ``last.pt`` of an unfinished run only.

    Returns:
        The record stored under ``ckpt["kd"]``.
    """
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "config": cfg.to_dict(),
        "teacher": teacher,
        "teacher_sha256": teacher_sha256,
    }
    if cfg.kd_teacher_vocab_sha256 is not None:  # an open-vocabulary teacher: the vocabulary a resume must reuse
        record["vocabulary"] = {"prompts": cfg.kd_teacher_prompts, "sha256": cfg.kd_teacher_vocab_sha256}
    if state is not None:
        record["state"] = state
    return record


def connector_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as detached fp32 CPU tensors, plain data that loads anywhere.

    Args:
        module: The distiller.

    Returns:
        Its state dict, copied.
    """
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def load_connector_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a recorded connector state, including one written before MGD's generators became connectors.

    Args:
        module: The distiller.
        state: The record's ``state``.
    """
    renamed = {}
    for key, value in state.items():
        for old, new in LEGACY_STATE_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        renamed[key] = value
    module.load_state_dict(renamed)


def restore_connectors(module: torch.nn.Module, path: Path) -> None:
    """Load the connector state a ``last.pt`` records into the distiller (after Ultralytics restored the student).

    Args:
        module: The distiller.
        path: The checkpoint; one without a recorded state leaves the connectors as they are.
    """
    state = (read_kd_record(path) or {}).get("state")
    if state:
        load_connector_state(module, state)


def resume_record(resume: Any) -> dict[str, Any] | None:
    """The KD record a resumed run continues from.

    Args:
        resume: Ultralytics' ``resume`` argument: falsy, True (the latest ``last*.pt`` under the working directory, as
            Ultralytics picks it) or a checkpoint path.

    Returns:
        The record (None when not resuming). A checkpoint killed between Ultralytics' write and yolo-kd's has no
        record; its ``train_args`` still carry the KD settings, so a record is rebuilt from them (no connector state).

    Raises:
        KDConfigError: No such checkpoint, one yolo-kd did not write, or one of a run that finished.
    """
    from ultralytics.utils import LOGGER, colorstr

    if not resume:
        return None
    if resume is True:  # as Ultralytics does: the most recent last.pt under runs/
        from ultralytics.utils.files import get_latest_run

        resume = get_latest_run()
    if not isinstance(resume, (str, Path)) or not Path(resume).is_file():
        raise KDConfigError(f"resume={resume}: no such checkpoint")
    ckpt = load_checkpoint_file(resume)
    epochs = (ckpt.get("train_args") or {}).get("epochs") if isinstance(ckpt, dict) else None
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    # Ultralytics' end-of-training mark (strip_optimizer sets epoch -1), or the last epoch's checkpoint of a run killed
    # during its final evaluation: every epoch is trained either way, and Ultralytics' resume would stop in a traceback
    if epoch == -1 or (isinstance(epoch, int) and isinstance(epochs, int) and epoch + 1 >= epochs):
        how = "finished" if epoch == -1 else "trained every epoch (it was stopped during its final evaluation)"
        raise KDConfigError(
            f"resume={resume}: this run {how} (epoch {epochs} of {epochs}); nothing to resume. To train on from its "
            f"weights, start a new run: model={Path(resume).with_name('best.pt')} with teacher= and kd= as before"
        )
    record = ckpt.get(KD_RECORD) if isinstance(ckpt, dict) else None
    if record is None:
        args = ckpt.get("train_args", {}) if isinstance(ckpt, dict) else {}
        if not args.get("teacher"):
            raise KDConfigError(f"resume={resume} was not written by yolo-kd (no '{KD_RECORD}' record)")
        record = {"config": {k: args[k] for k in KDConfig.field_names() if k in args}, "teacher": args["teacher"]}
        LOGGER.warning(f"{colorstr('yolo-kd:')} {resume} has no KD record; KD settings from its args, fresh connectors")
    return record


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint through a temporary file and a rename, so a kill never leaves a half-written file.

    Args:
        obj: The checkpoint.
        path: Where it goes.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


@contextmanager
def scratch_paths(last: Path, best: Path) -> Iterator[tuple[Path, Path]]:
    """Scratch paths beside ``last.pt`` and ``best.pt`` for one save, empty on entry and removed on exit.

    A scratch file left by a kill in an earlier save must not pass for this save's (``best.pt`` is only written on
    a new best, so its scratch file's presence is the signal ``complete_checkpoints`` reads).

    Args:
        last: The run's ``last.pt``.
        best: The run's ``best.pt``.

    Yields:
        The scratch paths for ``last.pt`` and ``best.pt``.
    """
    scratch = (last.with_name(f"partial-{last.name}"), best.with_name(f"partial-{best.name}"))
    for p in scratch:
        p.unlink(missing_ok=True)
    try:
        yield scratch
    finally:
        for p in scratch:
            p.unlink(missing_ok=True)


def periodic_copy(wdir: Path, epoch: int, save_period: int) -> Path | None:
    """The ``epoch{N}.pt`` copy Ultralytics' ``save_period`` asks for at this epoch, as Ultralytics names it.

    Args:
        wdir: The run's weights folder.
        epoch: The epoch just saved, from 0.
        save_period: Ultralytics' ``save_period`` (off when under 1).

    Returns:
        Its path, or None when this epoch gets no copy.
    """
    return wdir / f"epoch{epoch}.pt" if save_period > 0 and epoch % save_period == 0 else None


def complete_checkpoints(
    scratch_last: Path,
    scratch_best: Path,
    targets: dict[str, Path | None],
    record: dict[str, Any],
    drop_keys: Iterable[str],
) -> None:
    """Turn Ultralytics' checkpoint, written to scratch files, into yolo-kd's, moved into place atomically.

    Args:
        scratch_last: Where Ultralytics wrote ``last.pt`` this epoch.
        scratch_best: Where it wrote ``best.pt`` (only when this epoch was the best).
        targets: ``{"last": path, "best": path, "epoch": path or None}``; ``epoch`` is the save_period copy.
        record: The KD record with the connector state (``last.pt`` and epoch copies keep it, ``best.pt`` does not).
        drop_keys: Keys taken out of ``train_args`` (the KD keys), so plain ``YOLO(path)`` and resume parse them.
    """
    ckpt = load_checkpoint_file(scratch_last)
    drop = set(drop_keys)
    ckpt["train_args"] = {k: v for k, v in ckpt["train_args"].items() if k not in drop}
    for key in ("model", "ema"):  # the pickled models carry the trainer's args too (Ultralytics' model.args)
        args = getattr(ckpt.get(key), "args", None)
        if isinstance(args, dict):
            ckpt[key].args = {k: v for k, v in args.items() if k not in drop}
        elif isinstance(args, SimpleNamespace):  # Ultralytics' IterableSimpleNamespace until its final strip
            ckpt[key].args = type(args)(**{k: v for k, v in vars(args).items() if k not in drop})
    if scratch_best.exists():  # Ultralytics found a new best this epoch
        # best.pt goes first: a kill between the two saves then leaves last.pt at the previous epoch, which resume
        # trains again, never a last.pt whose best_fitness names an epoch that no best.pt holds
        atomic_save({**ckpt, KD_RECORD: {k: v for k, v in record.items() if k != "state"}}, targets["best"])
    ckpt[KD_RECORD] = record
    if targets.get("epoch") is not None:  # before last.pt: a kill between the two then trains (and copies) it again
        atomic_save(ckpt, targets["epoch"])
    atomic_save(ckpt, targets["last"])


def save_whole(trainer: Any, save: Callable[[], bool], record: Callable[[], dict[str, Any]], main: bool) -> bool:
    """Run Ultralytics' ``save_model`` into scratch files, then complete them and move them into place.

    Ultralytics writes its checkpoints in place; here ``last.pt`` and ``best.pt`` are always whole checkpoints of some
    finished epoch, with the KD record and without the KD keys in their ``train_args``.

    Args:
        trainer: The trainer (its ``last``, ``best``, ``wdir``, ``epoch`` and ``save_period`` are read).
        save: Ultralytics' ``save_model`` of that trainer.
        record: Builds the KD record (``kd_record``); called only when a rank that writes files has saved.
        main: Whether this rank writes files (rank 0, or the only process).

    Returns:
        Whether Ultralytics saved.
    """
    from . import compat  # imported here like this module's Ultralytics imports: importing checkpoint loads none

    with scratch_paths(trainer.last, trainer.best) as (scratch_last, scratch_best):
        with compat.checkpoints_written_to(trainer, scratch_last, scratch_best):
            saved = save()
        if saved and main:
            epoch_copy = periodic_copy(trainer.wdir, trainer.epoch, trainer.save_period)
            targets = {"last": trainer.last, "best": trainer.best, "epoch": epoch_copy}
            complete_checkpoints(scratch_last, scratch_best, targets, record(), kd_keys())
    return saved


def drop_connector_state(path: Path) -> None:
    """Remove the connector state from a finished run's checkpoint (finished runs cannot be resumed).

    Args:
        path: ``last.pt``; left as it is when it holds no state.
    """
    ckpt = load_checkpoint_file(path)
    if isinstance(ckpt.get(KD_RECORD), dict) and ckpt[KD_RECORD].pop("state", None) is not None:
        atomic_save(ckpt, path)


def trim_results_csv(csv: Path, last_epoch: int) -> int:
    """Drop the rows of ``results.csv`` past the epoch a resumed checkpoint holds.

    Ultralytics appends an epoch's row before it saves the checkpoint; a kill between the two would otherwise leave
    that epoch twice in ``results.csv`` once it is trained again.

    Args:
        csv: The run's ``results.csv``.
        last_epoch: The last epoch (1-based, as in the ``epoch`` column) the checkpoint holds.

    Returns:
        How many rows were dropped (the file is rewritten atomically only then).
    """
    lines = csv.read_text().splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[0]) <= last_epoch]
    if len(kept) < len(lines):
        write_text_atomic(csv, "".join(kept))
    return len(lines) - len(kept)
