"""Typed, validated knowledge-distillation settings.

Every KD key starts with ``kd_`` (plus ``teacher``, ``kd``, ``unlabeled`` and ``unlabeled_ratio``), so none
collides with an Ultralytics argument; ``tests/test_config.py`` checks that against the installed
``ultralytics/cfg/default.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import KDConfigError
from .inputs import read_yaml

__all__ = ["KDConfig", "KDConfigError", "load_kd_config", "load_recorded_config"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"  # inside the package: a wheel install has them too
INIT_NAMES = ("teacher", "random")
INIT_BLOCKS = ("first", "even")  # kept equal to yolo_kd.inherit.BLOCK_CHOICES (inherit imports Ultralytics; config not)
INIT_CHANNELS = ("auto", "importance", "even")  # kept equal to yolo_kd.inherit.CHANNEL_CHOICES
RUN_KEYS = ("teacher", "kd")  # KD keys of a training run besides the KDConfig fields
TEMPERATURE_RANGE = (1e-3, 1e3)  # beyond it a softmax/sigmoid saturates to one-hot or flat: no useful soft target
MAX_UNLABELED_RATIO = 0.95  # the mixed list holds ratio / (1 - ratio) unlabeled slots per labeled image
HEX_DIGITS = "0123456789abcdef"


@dataclass
class KDConfig:
    """Knowledge-distillation settings; the defaults are the ``default`` preset (logit + box + teacher assignment).

    Gains multiply each term the way Ultralytics' ``box``/``cls``/``dfl`` gains multiply the detection terms.
    A gain of 0 switches its term off (it is not computed, and its column stays at 0).
    """

    kd_cls: float = 1.0
    """Gain of class-logit KD: per-class binary KL between teacher and student sigmoid scores."""
    kd_box: float = 0.5
    """Gain of box-distribution KD (LD): KL between teacher and student DFL bin distributions."""
    kd_feat: float = 0.0
    """Gain of feature-map KD on the neck maps that feed the Detect head (P3/P4/P5); off in the default preset,
    on in ``full`` (it added no measured accuracy on our benchmark at about half of the KD terms' cost)."""
    kd_cross: float = 0.0
    """Gain of cross-head KD (CrossKD, Wang et al. CVPR 2024): the student's neck maps, through 1x1 connectors, run
    through the frozen teacher's own Detect head, and those outputs are distilled (class logits and DFL bins, the
    losses of kd_cls and kd_box) against the teacher's. The KD gradient reaches the student's neck and backbone but
    not its head, which learns from the ground truth alone. Off by default (not measured to pay yet)."""
    kd_cls_temp: float = 2.0
    """Temperature of class-logit KD (logits are divided by it; the loss is scaled by its square)."""
    kd_box_temp: float = 2.0
    """Temperature of box-distribution KD."""
    kd_feat_loss: str = "cwd"
    """Feature loss: 'cwd' (channel-wise distillation, Shu et al. 2021), 'mgd' (masked generative distillation,
    Yang et al. 2022) or 'pkd' (Pearson-correlation distillation, Cao et al. 2022)."""
    kd_feat_temp: float = 1.0
    """Temperature of CWD's spatial softmax."""
    kd_mgd_mask: float = 0.5
    """Share of student feature pixels MGD masks out before regenerating the teacher map."""
    kd_final: float = 0.0
    """KD gains (and the teacher's share in label assignment) at the last epoch as a fraction of the first, linear in
    between (like Ultralytics' ``lrf``); 0.0 (the default) hands the last epochs to the ground truth alone, 1.0 keeps
    them constant. Fading them out kept the distilled student rising where constant gains let the baseline catch up
    (docs/BENCHMARKS.md)."""
    kd_lead: float = 0.02
    """KD gains that follow the teacher's measured lead: the teacher is validated once before training (the student's
    validation set and classes), and each epoch every KD gain (and the teacher's share in label assignment) is scaled
    by min(1, max(0, (teacher - student) / kd_lead)), the student's score being its best validation mAP50-95 so far
    (whole before its first validation): whole while the teacher leads by kd_lead or more (0.02: 2 points), zero once
    the student has caught up. 0 switches it off. Needs Ultralytics' per-epoch validation (``val=True``, its
    default); a student that passes its teacher then keeps rising on the ground truth alone (docs/BENCHMARKS.md)."""
    kd_weight_power: float = 1.0
    """Anchor weight = teacher confidence ** power (0 weighs every anchor alike)."""
    kd_assign: float = 1.0
    """Teacher-guided label assignment (LAD, Nguyen et al. 2022): share of the teacher's scores and boxes in what
    Ultralytics' task-aligned assigner ranks to pick each object's positive anchors and their soft targets;
    0 assigns from the student's own predictions (Ultralytics' behaviour), 1 from the teacher's alone."""
    kd_init: str = "teacher"
    """How a student built from a YAML (no weights) starts: 'teacher' selects channels of the teacher's weights
    (``kd_init_channels``) when both are of one family (weight selection, Xu et al. 2024; e.g. v8s -> v8n,
    v8x -> v8l, and deeper teachers such as v8m/l/x -> v8n), else it keeps its random init with a one-line warning;
    'random' always keeps the random init. Pretrained or resumed students keep their weights either way."""
    kd_init_blocks: str = "first"
    """With kd_init=teacher and a deeper teacher: which of a layer's repeated teacher blocks the student's fewer blocks
    inherit: 'first' (the first N, the paper's layer selection) or 'even' (evenly spaced, the first always kept)."""
    kd_init_channels: str = "auto"
    """With kd_init=teacher and a wider teacher: which of the teacher's channels the student inherits: 'even' (evenly
    spaced, weight selection's choice), 'importance' (those with the largest normalisation scale |gamma|, network
    slimming's measure; the YOLOv8, YOLO11 and YOLO26 layer kinds, else evenly spaced with a warning), or 'auto'
    (the default since 2026-12-03): 'importance' when the teacher's checkpoint records a training from a model YAML
    without weights, else 'even'. From four teachers trained from scratch importance won (by 0.7-10 points); from
    three fine-tuned from pretrained weights (the users' kind) it ended 4-11 points below even spacing, as did the
    channels of smallest |gamma|, while a random consistent subset matched it (docs/BENCHMARKS.md)."""
    kd_class_map: str | dict | None = None
    """Student class -> teacher class, as a dict or a YAML file of one (names or indices); by default classes are
    matched by name (case, spaces, underscores and hyphens ignored). Student classes without a teacher class get no
    logit KD."""
    unlabeled: str | None = None
    """Folder of unlabeled images that join the training batches; on them the student learns from the teacher alone
    (every KD term, plus the teacher's confident boxes as pseudo-labels)."""
    unlabeled_ratio: float = 0.5
    """Share of unlabeled images among the training images of an epoch (and so, on average, of a batch)."""
    kd_pseudo: bool = True
    """Use the teacher's confident boxes as detection targets on unlabeled images (False: KD terms only there)."""
    kd_pseudo_conf: float = 0.5
    """Confidence a teacher box needs to become a pseudo-label."""
    kd_teacher_amp: bool = True
    """Run the teacher in reduced precision where the hardware does it natively (fp16 on CUDA, bf16 on CPUs with
    native bf16); False keeps it in fp32."""
    kd_teacher_prompts: str | dict | None = None
    """Open-vocabulary teachers (YOLO-World, YOLOE): student class -> prompt words (a comma-separated string or a
    list), as a dict or a YAML file of one, e.g. {hardhat: 'hard hat, safety helmet'}; a class's score is the max
    over its prompts, an empty value gives a class no prompt. Classes not listed are prompted with their own name.
    Recorded with the run as every class's prompts."""
    kd_teacher_embeddings: str | None = None
    """Open-vocabulary teachers: a .pt or .npz file mapping each prompt to its text-encoder vector (``yolo-kd embed``
    writes one); without it the text encoder is used when its weights are on disk (yolo-kd never downloads)."""
    kd_teacher_vocab_sha256: str | None = None
    """Hash of an open-vocabulary teacher's prompts and embeddings: set when a run starts, checked when it resumes (a
    different vocabulary stops the run); given by hand, it pins the vocabulary a run must use."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every value and normalise numbers and paths in place.

        Raises:
            KDConfigError: Naming the first bad value, in one line.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise KDConfigError(f"{f.name}={value!r} must be a number")
                if not math.isfinite(value):  # YAML's .nan/.inf; a NaN passes every range check below
                    raise KDConfigError(f"{f.name}={value} must be a finite number")
                setattr(self, f.name, float(value))
            elif f.type == "bool" and not isinstance(value, bool):
                raise KDConfigError(f"{f.name}={value!r} must be True or False")
        for name in ("kd_cls", "kd_box", "kd_feat", "kd_cross", "kd_weight_power"):
            if getattr(self, name) < 0:
                raise KDConfigError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("kd_cls_temp", "kd_box_temp", "kd_feat_temp"):
            if getattr(self, name) <= 0:
                raise KDConfigError(f"{name}={getattr(self, name)} must be > 0")
            low, high = TEMPERATURE_RANGE
            if not low <= getattr(self, name) <= high:
                raise KDConfigError(f"{name}={getattr(self, name)} must be in [{low}, {high}]")
        if not 0.0 <= self.kd_assign <= 1.0:
            raise KDConfigError(f"kd_assign={self.kd_assign} must be in [0, 1]")
        if not 0.0 <= self.kd_final <= 1.0:
            raise KDConfigError(f"kd_final={self.kd_final} must be in [0, 1]")
        if not 0.0 <= self.kd_lead <= 1.0:
            raise KDConfigError(f"kd_lead={self.kd_lead} must be in [0, 1] (a lead in mAP50-95, e.g. 0.02)")
        if not 0.0 <= self.kd_mgd_mask < 1.0:
            raise KDConfigError(f"kd_mgd_mask={self.kd_mgd_mask} must be in [0, 1)")
        if isinstance(self.kd_class_map, (str, Path)):
            path = Path(self.kd_class_map)
            if not path.is_file():
                raise KDConfigError(f"kd_class_map={self.kd_class_map}: no such file")
            loaded = read_yaml("kd_class_map", path)
            if not isinstance(loaded, dict):
                raise KDConfigError(
                    f"kd_class_map={self.kd_class_map}: expected a mapping student class -> teacher class"
                )
            self.kd_class_map = loaded
        elif self.kd_class_map is not None and not isinstance(self.kd_class_map, dict):
            raise KDConfigError(f"kd_class_map={self.kd_class_map!r} must be a dict or a YAML file")
        self._validate_vocabulary()
        if not 0.0 < self.unlabeled_ratio <= MAX_UNLABELED_RATIO:
            raise KDConfigError(f"unlabeled_ratio={self.unlabeled_ratio} must be in (0, {MAX_UNLABELED_RATIO}]")
        if not 0.0 < self.kd_pseudo_conf < 1.0:
            raise KDConfigError(f"kd_pseudo_conf={self.kd_pseudo_conf} must be in (0, 1)")
        if self.unlabeled is not None:
            from .dataset import image_files

            folder = Path(str(self.unlabeled))
            if not folder.is_dir():
                raise KDConfigError(f"unlabeled={self.unlabeled}: not a folder")
            if not image_files(folder):
                raise KDConfigError(f"unlabeled={self.unlabeled}: no images in it")
            self.unlabeled = str(folder.resolve())
        if self.kd_init not in INIT_NAMES:
            raise KDConfigError(f"kd_init={self.kd_init!r} is unknown; choose one of {INIT_NAMES}")
        if self.kd_init_blocks not in INIT_BLOCKS:
            raise KDConfigError(f"kd_init_blocks={self.kd_init_blocks!r} is unknown; choose one of {INIT_BLOCKS}")
        if self.kd_init_channels not in INIT_CHANNELS:
            raise KDConfigError(f"kd_init_channels={self.kd_init_channels!r} is unknown; choose one of {INIT_CHANNELS}")
        from .losses import FEATURE_LOSSES  # the one list of feature-loss names (imported late: it needs torch)

        if not isinstance(self.kd_feat_loss, str) or self.kd_feat_loss not in FEATURE_LOSSES:
            raise KDConfigError(f"kd_feat_loss={self.kd_feat_loss!r} is unknown; choose one of {tuple(FEATURE_LOSSES)}")

    def _validate_vocabulary(self) -> None:
        """Check the open-vocabulary keys: a prompts mapping (or its YAML file), an embeddings file, a SHA-256."""
        prompts = self.kd_teacher_prompts
        if isinstance(prompts, (str, Path)):
            if not Path(prompts).is_file():
                raise KDConfigError(f"kd_teacher_prompts={prompts}: no such file")
            loaded = read_yaml("kd_teacher_prompts", prompts)
            if not isinstance(loaded, dict):
                raise KDConfigError(f"kd_teacher_prompts={prompts}: expected a mapping student class -> prompts")
            self.kd_teacher_prompts = prompts = loaded
        if prompts is not None and not isinstance(prompts, dict):
            raise KDConfigError(f"kd_teacher_prompts={prompts!r} must be a dict or a YAML file")
        for key, value in (prompts or {}).items():
            words = value if isinstance(value, (list, tuple)) else [value]
            if not all(w is None or isinstance(w, str) for w in words):
                raise KDConfigError(f"kd_teacher_prompts: {key!r}: {value!r} must be a string or a list of strings")
        if self.kd_teacher_embeddings is not None:
            path = Path(str(self.kd_teacher_embeddings))
            if not path.is_file():
                raise KDConfigError(f"kd_teacher_embeddings={self.kd_teacher_embeddings}: no such file")
            self.kd_teacher_embeddings = str(path.resolve())
        sha = self.kd_teacher_vocab_sha256
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= set(HEX_DIGITS)):
            raise KDConfigError(f"kd_teacher_vocab_sha256={sha!r} must be a SHA-256 hex digest (64 characters)")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as stored in checkpoints.

        Returns:
            Every field and its value.
        """
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every KD field.

        Returns:
            The field names, in declaration order.
        """
        return tuple(f.name for f in fields(cls))

    @classmethod
    def help_rows(cls) -> list[tuple[str, Any, str]]:
        """(key, default, meaning) for every field, read from the attribute docstrings in this file.

        Returns:
            One row per field.
        """
        docs = _field_docs()
        default = cls()
        return [(k, getattr(default, k), docs.get(k, "")) for k in cls.field_names()]


def kd_keys() -> tuple[str, ...]:
    """Every key the KD trainer takes out of Ultralytics' overrides.

    Returns:
        ``teacher``, ``kd`` and every ``KDConfig`` field.
    """
    return (*RUN_KEYS, *KDConfig.field_names())


def _field_docs() -> dict[str, str]:
    """Read each field's docstring from this source file (dataclasses keep no per-field docs at run time)."""
    import ast

    tree = ast.parse(Path(__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KDConfig")
    docs, last = {}, None
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif last and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[last] = " ".join(str(node.value.value).split())
            last = None
    return docs


def resolve_preset(kd: str | Path | None) -> Path | None:
    """Map ``kd=`` to a YAML file: a path, or a preset name (default, full, logit, feature:
    ``yolo_kd/presets/``, copied to ``configs/kd/``).

    Args:
        kd: The ``kd=`` value.

    Returns:
        The YAML file, or None without ``kd``.

    Raises:
        KDConfigError: No such file or preset.
    """
    if kd is None or kd == "":
        return None
    if not isinstance(kd, (str, Path)):
        raise KDConfigError(f"kd={kd!r}: give a preset name or the path of a YAML file of kd_* keys")
    path = Path(kd)
    if path.suffix.lower() in {".yaml", ".yml"}:
        if not path.is_file():
            raise KDConfigError(f"kd={kd}: no such file")
        return path
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    if str(kd) not in names:  # a name only, never a path into or out of the presets folder
        raise KDConfigError(f"kd={kd}: not a YAML file nor a preset name; presets: {names}")
    return PRESET_DIR / f"{kd}.yaml"


def load_kd_config(kd: str | Path | dict | None = None, **overrides: Any) -> KDConfig:
    """Build a validated ``KDConfig`` from a preset or YAML path (or dict), then per-key overrides.

    Without ``kd`` the dataclass defaults apply, which equal the ``default`` preset (a test checks).

    Args:
        kd: A preset name, a YAML path or a dict of KD keys.
        **overrides: KD keys that win over ``kd``.

    Returns:
        The validated config.

    Raises:
        KDConfigError: Unknown keys and bad values.
    """
    values: dict[str, Any] = {}
    if isinstance(kd, dict):
        values.update(kd)
    else:
        path = resolve_preset(kd)
        if path is not None:
            loaded = read_yaml("kd", path) or {}
            if not isinstance(loaded, dict):
                raise KDConfigError(f"kd={kd}: expected a mapping of kd_* keys, got {type(loaded).__name__}")
            values.update(loaded)
    values.update(overrides)
    unknown = sorted(set(values) - set(KDConfig.field_names()))
    if unknown:
        raise KDConfigError(f"unknown KD key(s) {unknown}; valid keys: {list(KDConfig.field_names())}")
    try:
        return KDConfig(**values)
    except TypeError as e:  # wrong field types that dataclass construction itself rejects
        raise KDConfigError(str(e)) from e


# Keys added after checkpoints were first written, each with the value that reproduces a run recorded before it existed
# (teacher-guided assignment did not exist, so such a run assigned from the student alone; nor did the teacher init,
# nor kd_final, so its gains were constant: kd_final's default became 0.0 later; the teacher init chose evenly spaced
# channels before kd_init_channels, as 'auto' does for fine-tuned teachers since 2026-12-03; the gains ignored the
# teacher's lead before kd_lead).
RECORDED_BEFORE: dict[str, Any] = {
    "kd_assign": 0.0,
    "kd_init": "random",
    "kd_final": 1.0,
    "kd_init_channels": "even",
    "kd_lead": 0.0,
}


def load_recorded_config(config: dict[str, Any]) -> KDConfig:
    """The KD settings stored in a checkpoint; a key the checkpoint predates keeps the behaviour it was trained with.

    Args:
        config: The record's ``config``.

    Returns:
        The validated config.
    """
    return load_kd_config({**RECORDED_BEFORE, **config})
