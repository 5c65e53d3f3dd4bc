"""``yolo-kd`` command line, in Ultralytics' ``key=value`` style.

yolo-kd train model=yolov8n.yaml teacher=teacher.pt data=data.yaml kd=default epochs=100 imgsz=640
yolo-kd train resume=runs/detect/train/weights/last.pt
yolo-kd demo [regime=finetune|scratch] [epochs=15] [teacher_epochs=12] [imgsz=128] [project=runs/demo] [overwrite=False]
yolo-kd export model=best.pt format=onnx [data=data.yaml] [imgsz=640] [quantize=8|16|32] [overwrite=False]
yolo-kd export model=best.pt format=litert quantize=8 data=data.yaml [int8_box_tail=float|int16|int8]
yolo-kd label model=teacher.pt source=raw_images/ [out=raw_images_labelled] [conf=0.25] [val_fraction=0.1] [val=DIR]
yolo-kd label model=yoloe-11s-seg.pt source=raw_images/ names=data.yaml [prompts=prompts.yaml] [embeddings=FILE]
yolo-kd embed model=yolov8s-worldv2.pt names=data.yaml out=embeddings.pt [prompts=prompts.yaml] [overwrite=False]
yolo-kd dataset [root=datasets] [name=kdshapes] [n_train=400] [n_val=100] [imgsz=160] [seed=0] [domain=kdshapes|source]
yolo-kd help
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import KDConfig, KDConfigError, kd_keys, resolve_preset
from .inputs import check_keys, check_writable, check_yaml_keys, read_checkpoint

USAGE = __doc__
# Keys whose values are names or paths: kept as typed (Ultralytics' value rules would make project=2024 a number and
# name=1.10 the folder '1.1')
TEXT_KEYS = frozenset({"project", "name", "root", "source", "out", "kd"})
# Modules that copy Ultralytics' AUTOINSTALL / ONLINE flags into their own globals when they are imported.
ULTRALYTICS_FLAG_MODULES = (
    "ultralytics.utils",
    "ultralytics.utils.checks",
    "ultralytics.utils.events",
    "ultralytics.utils.export.tensorflow",
)


def configure_ultralytics() -> None:
    """Turn Ultralytics' network probe and pip auto-install off for this command, whatever was imported first.

    A variable the user set (``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL``) is kept. Ultralytics reads both once, when it is
    imported, and some modules copy the flags, so a process that imported Ultralytics before calling ``main`` gets the
    flags set on the loaded modules too; the command then behaves the same in either order.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    utils = sys.modules.get("ultralytics.utils")
    if utils is None:
        return  # Ultralytics will read the variables above when it is imported
    flags = {"AUTOINSTALL": utils.env_bool("YOLO_AUTOINSTALL", True)}
    if utils.env_bool("YOLO_OFFLINE"):
        flags["ONLINE"] = False
    for name in ULTRALYTICS_FLAG_MODULES:
        module = sys.modules.get(name)
        for attr, value in flags.items():
            if module is not None and hasattr(module, attr):
                setattr(module, attr, value)


def parse_pairs(argv: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` words with Ultralytics' own value rules (numbers, booleans, None, lists).

    Args:
        argv: The words after the command name.

    Returns:
        The parsed values by key.
    """
    from ultralytics.cfg import smart_value

    out: dict[str, Any] = {}
    for word in argv:
        if "=" not in word:
            raise KDConfigError(f"'{word}' is not key=value")
        key, value = word.split("=", 1)
        if not key or value == "":
            raise KDConfigError(f"'{word}' needs both a key and a value")
        key, value = key.strip(), value.strip()
        out[key] = value if key in TEXT_KEYS and value.lower() != "none" else smart_value(value)
    return out


def help_text() -> str:
    """The usage lines and every KD key with its default and meaning."""
    rows = [
        ("teacher", None, "Path of the trained teacher checkpoint (.pt). Required, except on resume."),
        ("kd", "default", "KD preset (default, full, logit, feature; copies in configs/kd/) or a YAML of kd_* keys."),
        *KDConfig.help_rows(),
    ]
    width = max(len(k) for k, _, _ in rows)
    lines = [USAGE.strip(), "", "KD keys (any other key=value is passed to Ultralytics' trainer untouched):"]
    lines += [f"  {k:<{width}}  default={d!s:<8} {doc}" for k, d, doc in rows]
    return "\n".join(lines)


def _params(fn: Callable[..., Any]) -> list[str]:
    """The named parameters of ``fn``: the keys a command built on it takes."""
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD]


def _ultralytics_keys() -> list[str]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return list(DEFAULT_CFG_DICT)


def cmd_train(kwargs: dict[str, Any]) -> None:
    """``yolo-kd train``: every key is checked and every named file read before the teacher or student loads.

    Args:
        kwargs: The command's key=value pairs.
    """
    check_keys("train", kwargs, [*_ultralytics_keys(), *kd_keys()])
    check_yaml_keys(kwargs, ("kd", "kd_class_map", "kd_teacher_prompts", "data", "cfg"))
    resolve_preset(kwargs.get("kd"))  # a preset name that is none, before anything else is read
    if kwargs.get("project"):
        check_writable("project", kwargs["project"])
    from ultralytics import YOLO

    from . import qat
    from .checkpoint import resume_record
    from .trainer import KDDetectionTrainer

    resume = kwargs.get("resume")
    if resume not in (None, False):
        if not isinstance(resume, (str, Path)):
            raise KDConfigError("resume needs a path: yolo-kd train resume=runs/.../weights/last.pt")
        if qat.is_qat_checkpoint(read_checkpoint("resume", resume)):
            qat.check_installed("resume of a QAT run")  # else Ultralytics would try to pip-install ModelOpt
        # before Ultralytics sees it: Model.train quietly starts a new run from a finished checkpoint, which would then
        # fail for want of teacher=; resume_record says in one line that the run finished (or was not yolo-kd's)
        resume_record(resume)
        check_writable("resume", Path(str(resume)).parent)  # the run's weights are saved beside it
        model = YOLO(str(resume))
        kwargs["resume"] = True  # Model.train maps resume=True to its own checkpoint path
        model.train(trainer=KDDetectionTrainer, **kwargs)
        return
    student = kwargs.pop("model", "yolov8n.yaml")
    if not str(student).endswith((".yaml", ".yml")):
        _local_file("model", student)
    else:
        _model_yaml(student)
    # Ultralytics would fall back to coco8.yaml, or fetch a named dataset: yolo-kd trains on the user's files only
    if not kwargs.get("data"):
        raise KDConfigError("train needs data=path/to/data.yaml (the dataset the student and teacher share)")
    for key in ("data", "cfg"):
        if kwargs.get(key) is not None:
            _local_file(key, kwargs[key], "a local YAML file")
    _check_ultralytics_values(kwargs)
    model = YOLO(student)
    model.train(trainer=KDDetectionTrainer, **kwargs)


def _model_yaml(path: Any) -> None:
    """A model YAML on disk or one of Ultralytics' own (``yolov8n.yaml``, ...), refused in one line otherwise."""
    from ultralytics.nn.tasks import yaml_model_load

    try:
        yaml_model_load(str(path))  # Ultralytics' lookup: yolov8n.yaml is yolov8.yaml at scale n
    except Exception:
        raise KDConfigError(f"model={path}: no such model YAML (a file on disk, or one of Ultralytics')") from None


def _check_ultralytics_values(kwargs: dict[str, Any]) -> None:
    """Ultralytics' own type checks of its arguments, run before anything loads, as one line."""
    from ultralytics.cfg import check_cfg

    values = {k: v for k, v in kwargs.items() if k not in kd_keys() and k != "trainer"}
    try:
        check_cfg(values)
    except (TypeError, ValueError) as e:
        raise KDConfigError(" ".join(str(e).split())) from None


def _local_file(key: str, path: Any, what: str = "a local checkpoint") -> None:
    """Ultralytics would try to download a missing file by name; yolo-kd never downloads, so say so instead."""
    if not Path(str(path)).is_file():
        raise KDConfigError(f"{key}={path}: no such file (yolo-kd downloads nothing; give {what})")


def cmd_demo(kwargs: dict[str, Any]) -> None:
    """``yolo-kd demo`` (its keys are checked by ``run_demo``).

    Args:
        kwargs: The command's key=value pairs.
    """
    from .demo import run_demo

    run_demo(**kwargs)


def cmd_export(kwargs: dict[str, Any]) -> None:
    """``yolo-kd export``: keys are yolo-kd's verification keys or Ultralytics' export arguments.

    Args:
        kwargs: The command's key=value pairs.
    """
    from .export import export_and_verify

    check_keys("export", kwargs, [*_params(export_and_verify), *_ultralytics_keys()])
    if "model" not in kwargs:
        raise KDConfigError("export needs model=PATH (a checkpoint or a run folder)")
    export_and_verify(**kwargs)


def cmd_label(kwargs: dict[str, Any]) -> None:
    """``yolo-kd label``.

    Args:
        kwargs: The command's key=value pairs.
    """
    from .label import label_folder

    check_keys("label", kwargs, _params(label_folder))
    for key in ("model", "source"):
        if key not in kwargs:
            raise KDConfigError(f"label needs {key}=")
    label_folder(**kwargs)


def cmd_embed(kwargs: dict[str, Any]) -> None:
    """``yolo-kd embed``: an open-vocabulary model's prompt embeddings of a student's classes, to a file.

    Args:
        kwargs: The command's key=value pairs.
    """
    from .vocabulary import embed_prompts

    check_keys("embed", kwargs, _params(embed_prompts))
    for key in ("model", "names", "out"):
        if key not in kwargs:
            raise KDConfigError(f"embed needs {key}=")
    embed_prompts(**kwargs)


def cmd_dataset(kwargs: dict[str, Any]) -> None:
    """``yolo-kd dataset``.

    Args:
        kwargs: The command's key=value pairs.
    """
    from .dataset import make_dataset

    check_keys("dataset", kwargs, _params(make_dataset))
    check_writable("root", kwargs.get("root", "datasets"))
    print(make_dataset(**kwargs))


def main(argv: list[str] | None = None) -> int:
    """Run one ``yolo-kd`` command.

    Args:
        argv: The words after ``yolo-kd`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 2 refused (one line on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_ultralytics()
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(help_text())
        return 0
    command, rest = argv[0], argv[1:]
    commands = {
        "train": cmd_train,
        "demo": cmd_demo,
        "export": cmd_export,
        "label": cmd_label,
        "embed": cmd_embed,
        "dataset": cmd_dataset,
    }
    if command not in commands:
        print(
            f"yolo-kd: unknown command '{command}'; commands: {sorted(commands)} (see 'yolo-kd help')", file=sys.stderr
        )
        return 2
    try:
        commands[command](parse_pairs(rest))
    except KDConfigError as e:
        print(f"yolo-kd: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
