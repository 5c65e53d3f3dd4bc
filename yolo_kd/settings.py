"""A run's KD settings, from the trainer's arguments or from the checkpoint it resumes; checked before any write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoint, qat
from .classes import class_pairs, name_list
from .config import KDConfig, KDConfigError, kd_keys, load_kd_config, load_recorded_config
from .files import atomic_path
from .teacher import dense_branch_fused_away, file_sha256, load_teacher_model
from .vocabulary import is_open_vocabulary, open_vocabulary_teacher

RESUME_KEYS = ("teacher", "kd_teacher_embeddings", "unlabeled")  # the KD keys a resume takes: files that may have moved


@dataclass
class RunSettings:
    """What a KD run is made of, settled before Ultralytics' trainer is built.

    Attributes:
        cfg: The validated KD settings.
        teacher_path: The teacher checkpoint's absolute path.
        teacher_sha256: Its hash.
        teacher_model: The loaded teacher (fp32, CPU, not yet frozen).
        state: The connectors' state to resume with, or None.
    """

    cfg: KDConfig
    teacher_path: str
    teacher_sha256: str
    teacher_model: nn.Module
    state: dict[str, Any] | None = None


def settle(overrides: dict[str, Any]) -> RunSettings:
    """A run's KD settings, before Ultralytics builds anything: from the checkpoint on resume, else the arguments.

    Args:
        overrides: The trainer's overrides; the KD keys are taken out in place (``pop_kd_args``).

    Returns:
        The settings.

    Raises:
        KDConfigError: Bad KD input, or ``quantize=8`` without its extra installed.
    """
    if qat.quantize_value(overrides.get("quantize")) == 8:
        qat.check_installed("quantize=8")
    kd_args = pop_kd_args(overrides)
    record = checkpoint.resume_record(overrides.get("resume"))
    if record is not None:
        return settings_from_checkpoint(record, kd_args)
    return settings_from_arguments(kd_args, overrides)


def record_in_args(args: Any, settings: RunSettings, save_dir: Path, write: bool) -> None:
    """Put the KD settings into Ultralytics' train args, and rewrite the run's ``args.yaml`` with them.

    They ride along in args because Ultralytics' multi-GPU launch rebuilds the trainer in each worker from
    ``vars(args)`` alone, and ``args.yaml`` should say how the run was made. Checkpoints get them stripped
    (``checkpoint.complete_checkpoints``).

    Args:
        args: Ultralytics' train args (a namespace), changed in place.
        settings: The run's settings.
        save_dir: The run folder, whose ``args.yaml`` Ultralytics has written without the KD keys.
        write: Whether this process writes files (the main process).
    """
    from ultralytics.utils import YAML

    for key, value in {"teacher": settings.teacher_path, **settings.cfg.to_dict()}.items():
        setattr(args, key, value)
    if write:
        with atomic_path(save_dir / "args.yaml") as tmp:
            YAML.save(tmp, vars(args))


def pop_kd_args(overrides: dict[str, Any]) -> dict[str, Any]:
    """Take the KD keys out of Ultralytics' overrides, so Ultralytics' own keys pass untouched.

    Args:
        overrides: The trainer's overrides, changed in place.

    Returns:
        The KD keys and their values.

    Raises:
        KDConfigError: A ``kd_*`` key that is not a KD key (a misspelling Ultralytics would report less clearly).
    """
    kd_args = {k: overrides.pop(k) for k in list(overrides) if k in kd_keys()}
    unknown = sorted(k for k in overrides if k.startswith("kd_"))
    if unknown:
        raise KDConfigError(f"unknown KD key(s) {unknown}; valid keys: {list(kd_keys())}")
    return kd_args


def settings_from_checkpoint(record: dict[str, Any], kd_args: dict[str, Any]) -> RunSettings:
    """A resumed run's settings: those recorded in its checkpoint; only ``teacher=`` may point to a moved file.

    Args:
        record: The checkpoint's KD record (``checkpoint.resume_record``).
        kd_args: The KD keys given with ``resume=`` (all but ``teacher`` are ignored, with a warning).

    Returns:
        The settings.

    Raises:
        KDConfigError: The teacher file differs from the one the run was trained with (hash), or is unreadable.
    """
    from ultralytics.utils import LOGGER, colorstr

    ignored = sorted(k for k in kd_args if k not in RESUME_KEYS)
    if ignored:
        LOGGER.warning(f"{colorstr('yolo-kd:')} resume ignores {ignored}: KD settings come from the checkpoint")
    config = dict(record["config"])
    if kd_args.get("kd_teacher_embeddings"):  # a moved embeddings file; the recorded hash still decides
        config["kd_teacher_embeddings"] = kd_args["kd_teacher_embeddings"]
    if kd_args.get("unlabeled") and config.get("unlabeled"):  # a moved folder of unlabeled images
        config["unlabeled"] = kd_args["unlabeled"]
    cfg = load_recorded_config(config)
    if record.get("state") is None and (cfg.kd_feat > 0 or cfg.kd_cross > 0):
        # the connectors would restart from random weights while the optimizer resumes their old moments
        raise KDConfigError(
            "this checkpoint holds no connector state (kd_feat/kd_cross train connectors): it is a best.pt, or a "
            "last.pt emptied at its run's end; resume from the run's last.pt, or start a new run from these weights"
        )
    teacher = kd_args.get("teacher") or record["teacher"]
    model = load_teacher_model(teacher)  # a moved or unreadable teacher file is refused here, in one line
    sha = file_sha256(teacher)
    recorded = record.get("teacher_sha256")
    if recorded is not None and sha != recorded:
        raise KDConfigError(f"teacher={teacher} is not the teacher this run was trained with (file hash differs)")
    if is_open_vocabulary(model):
        # the recorded prompts list every student class in order: the vocabulary is rebuilt without the data YAML
        set_vocabulary(model, list(cfg.kd_teacher_prompts or {}), cfg, teacher)
    return RunSettings(cfg, str(Path(teacher).resolve()), sha, model, record.get("state"))


def set_vocabulary(model: nn.Module, names: list[str] | None, cfg: KDConfig, teacher: str | Path) -> None:
    """Give an open-vocabulary teacher the student's classes, and record the prompts and their hash in ``cfg``.

    Args:
        model: The open-vocabulary teacher, changed in place (``vocabulary.apply_vocabulary``).
        names: The student's class names.
        cfg: The KD settings: ``kd_teacher_prompts`` becomes every class's prompts, ``kd_teacher_vocab_sha256`` their
            hash (which must equal the one already there, recorded or pinned).
        teacher: The teacher's path, for messages.

    Raises:
        KDConfigError: No names, no embeddings, or a vocabulary whose hash differs from the one recorded.
    """
    vocab = open_vocabulary_teacher(model, names, cfg.kd_teacher_prompts, cfg.kd_teacher_embeddings, teacher)
    if cfg.kd_teacher_vocab_sha256 is not None and cfg.kd_teacher_vocab_sha256 != vocab.sha256:
        raise KDConfigError(
            f"teacher={teacher}: its prompt embeddings hash to {vocab.sha256[:12]}..., not to the recorded "
            f"kd_teacher_vocab_sha256 {cfg.kd_teacher_vocab_sha256[:12]}...: not the vocabulary this run was made with"
        )
    cfg.kd_teacher_prompts = vocab.prompts
    cfg.kd_teacher_vocab_sha256 = vocab.sha256


def settings_from_arguments(kd_args: dict[str, Any], overrides: dict[str, Any]) -> RunSettings:
    """A new run's settings, with the teacher checked against the student and data before anything is written.

    Args:
        kd_args: The KD keys (``pop_kd_args``).
        overrides: Ultralytics' overrides (``model`` and ``data`` are read).

    Returns:
        The settings.

    Raises:
        KDConfigError: Bad KD values, an unreadable teacher, or a teacher/student pair that cannot be matched.
    """
    if overrides.get("distill_model"):  # Ultralytics would wrap the student in its own distiller beside yolo-kd's
        raise KDConfigError(
            f"distill_model={overrides['distill_model']} is Ultralytics' own distillation; yolo-kd's teacher is "
            "teacher= (for the native one alone, train with plain Ultralytics)"
        )
    kd_args = dict(kd_args)
    teacher = kd_args.pop("teacher", None)
    cfg = load_kd_config(kd_args.pop("kd", None), **kd_args)
    model = load_teacher_model(teacher)
    if is_open_vocabulary(model) and cfg.kd_cross > 0:
        raise KDConfigError(
            f"kd_cross={cfg.kd_cross}: teacher={teacher} is an open-vocabulary model, whose head scores against text "
            "embeddings; cross-head KD needs a fixed-class Detect head (use kd_cls/kd_box with it)"
        )
    single_cls = bool(overrides.get("single_cls"))
    if is_open_vocabulary(model) and single_cls:
        raise KDConfigError(
            f"single_cls=True: teacher={teacher} is an open-vocabulary model, prompted with the student's class names, "
            "and single_cls leaves one class named 'item'; train without single_cls"
        )
    if is_open_vocabulary(model):
        names = data_names(overrides.get("data"))
        if names is None:  # prompted with the student's class names, which only the data YAML gives this early
            raise KDConfigError(
                f"teacher={teacher} is an open-vocabulary model, prompted with the student's class names: "
                f"data={overrides.get('data')} is not a data YAML file with names on disk"
            )
        set_vocabulary(model, names, cfg, teacher)
    elif cfg.kd_teacher_prompts or cfg.kd_teacher_embeddings or cfg.kd_teacher_vocab_sha256:
        raise KDConfigError(
            f"kd_teacher_prompts/kd_teacher_embeddings/kd_teacher_vocab_sha256 are for open-vocabulary teachers "
            f"(YOLO-World, YOLOE); teacher={teacher} has fixed classes"
        )
    check_pair(model, overrides.get("model"), overrides.get("data"), cfg, single_cls)
    return RunSettings(cfg, str(Path(teacher).resolve()), file_sha256(teacher), model)


def check_pair(teacher: nn.Module, model: Any, data: Any, cfg: KDConfig, single_cls: bool = False) -> None:
    """Check that teacher and student have the same strides and share classes, when both can be read from disk.

    Args:
        teacher: The teacher model.
        model: Ultralytics' ``model=`` (a YAML or a ``.pt``; anything else is checked later, in the trainer).
        data: Ultralytics' ``data=`` (a YAML file gives the class names).
        cfg: The KD settings (``kd_class_map``).
        single_cls: Ultralytics' ``single_cls``: the student then has one class, which Ultralytics names 'item'.

    Raises:
        KDConfigError: Different strides, input channels the teacher does not take, no class in common, or
            pseudo-labels asked of a teacher that cannot give them.
    """
    from ultralytics.nn.tasks import DetectionModel

    from .checkpoint import load_model_file

    names = ["item"] if single_cls else data_names(data)  # Ultralytics' get_dataset renames a single class 'item'
    if isinstance(model, (str, Path)) and str(model).endswith((".yaml", ".yml")):
        student_stride = DetectionModel(str(model), nc=len(names or [0]), verbose=False).stride
    elif isinstance(model, (str, Path)) and str(model).endswith(".pt") and Path(model).is_file():
        student_stride = load_model_file(model).stride
    else:
        student_stride = None
    if student_stride is not None and student_stride.tolist() != teacher.stride.tolist():
        raise KDConfigError(
            f"teacher strides {teacher.stride.int().tolist()} differ from the student's "
            f"{student_stride.int().tolist()}: their head maps cannot be matched"
        )
    if cfg.unlabeled and cfg.kd_pseudo and dense_branch_fused_away(teacher):
        raise KDConfigError(
            "unlabeled= with kd_pseudo=True: this end-to-end teacher was saved fused, without the dense branch its "
            "pseudo-labels come from; give its training checkpoint (weights/best.pt) or set kd_pseudo=False"
        )
    channels, t_in = data_channels(data), next(teacher.parameters()).shape[1]
    if channels is not None and channels != t_in:
        raise KDConfigError(
            f"the teacher takes {t_in}-channel images, data={data} has {channels} (its channels: key): "
            "train the teacher on images like the student's"
        )
    if names is not None:
        try:
            class_pairs(names, name_list(teacher.names), cfg.kd_class_map)
        except KDConfigError as e:
            if single_cls:  # say why the student's classes are not the data YAML's
                raise KDConfigError(f"single_cls=True names the student's one class 'item': {e}") from None
            raise


def data_channels(data: Any) -> int | None:
    """The image channels of Ultralytics' ``data=`` (its ``channels:`` key, 3 when absent), when it is a YAML on disk.

    Args:
        data: Ultralytics' ``data=``.

    Returns:
        The channel count, or None when the file cannot be read here.
    """
    cfg = _data_yaml(data)
    return None if cfg is None else int(cfg.get("channels", 3))


def data_names(data: Any) -> list[str] | None:
    """The class names of Ultralytics' ``data=``, when it is a YAML file on disk.

    Args:
        data: Ultralytics' ``data=``.

    Returns:
        The names, or None when they cannot be read here (the trainer reads them later).
    """
    cfg = _data_yaml(data)
    return None if cfg is None else name_list(cfg.get("names")) or None


def _data_yaml(data: Any) -> dict[str, Any] | None:
    """Ultralytics' ``data=`` read as a dict when it is a YAML file on disk, else None (the trainer reads it later)."""
    from ultralytics.utils import YAML

    if isinstance(data, (str, Path)) and str(data).endswith((".yaml", ".yml")) and Path(data).is_file():
        return YAML.load(data)
    return None
