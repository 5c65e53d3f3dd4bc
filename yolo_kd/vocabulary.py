"""Open-vocabulary teachers (YOLO-World, YOLOE): their vocabulary set to the student's class names, once, at load.

An open-vocabulary head scores each anchor against text embeddings of whatever prompts it is given. yolo-kd gives it
the prompts of the student's classes (a class's own name unless ``kd_teacher_prompts`` names other words), then turns
the model in place into a closed-set detector whose classes are the student's: the embeddings are baked in (YOLOE
fuses them into its class convolutions, YOLO-World keeps them as its fixed text features) and, where a class has
several prompts, a ``PromptMax`` module takes the max of their logits. From then on the teacher is like any other:
``nc`` = the student's prompted classes, ``names`` = their names, the same raw outputs (a YOLOE segmentation head
becomes a YOLOE detection head), and the trainer, the criterion and ``yolo-kd label`` need no open-vocabulary code.

Embeddings are the text encoder's outputs (Ultralytics' ``get_text_pe`` before YOLOE's own text head), one vector per
prompt: from a file (``kd_teacher_embeddings``, a ``.pt`` or ``.npz`` mapping prompt -> vector, written by
``yolo-kd embed``), else from the text encoder when its weights are on disk. yolo-kd never downloads them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .classes import norm_name
from .errors import KDConfigError
from .files import atomic_path
from .hooks import find_detect_head

WORLD_ENCODER = "clip:ViT-B/32"  # what WorldModel.get_text_pe builds
YOLOE_ENCODER = "mobileclip:blt"  # YOLOEModel's default when its YAML names none


def is_open_vocabulary(model: nn.Module) -> bool:
    """Whether a model's Detect head scores classes against text embeddings (YOLO-World, YOLOE).

    Args:
        model: An Ultralytics model.

    Returns:
        True for WorldDetect and YOLOEDetect heads (YOLOE segmentation included); False for a YOLOE whose vocabulary
        is already fused in (a prompt-free ``-pf`` model, or one saved after ``set_classes``): it has fixed classes.
    """
    from ultralytics.nn.modules.head import WorldDetect, YOLOEDetect

    try:
        head = find_detect_head(model)
    except ValueError:
        return False
    if isinstance(head, YOLOEDetect):
        return not head.is_fused and not hasattr(head, "lrpc")
    return isinstance(head, WorldDetect)


def class_prompts(names: list[str], prompts: dict | None) -> dict[str, list[str]]:
    """The prompts of every student class: its own name, unless ``prompts`` gives other words.

    Args:
        names: The student's class names, in order.
        prompts: ``kd_teacher_prompts``: student class (name or index) -> prompt words, as a comma-separated string
            or a list; an empty value gives that class no prompt (and so no logit KD).

    Returns:
        Student class name -> its prompts, in the student's class order.

    Raises:
        KDConfigError: A key that is no student class, or a value that is neither a string nor a list of strings.
    """
    names = [str(n) for n in names]  # a data YAML may name classes by number; prompts and embeddings are text
    given: dict[int, list[str]] = {}
    for key, value in (prompts or {}).items():
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(names):
            index = key
        else:
            index = next((i for i, n in enumerate(names) if norm_name(n) == norm_name(key)), -1)
        if index < 0:
            raise KDConfigError(f"kd_teacher_prompts: the student has no class {key!r}; classes: {names}")
        if isinstance(value, str):
            words = value.split(",")
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            words = list(value)
        elif value is None:
            words = []
        else:
            raise KDConfigError(f"kd_teacher_prompts: {key!r}: {value!r} must be a string or a list of strings")
        given[index] = list(dict.fromkeys(w.strip() for w in words if w.strip()))  # ordered, no repeats
    return {n: given.get(i, [n]) for i, n in enumerate(names)}


@dataclass
class Vocabulary:
    """The prompts an open-vocabulary teacher is given and their embeddings.

    Attributes:
        prompts: Student class name -> its prompts (every student class, in order; [] for a class without one).
        embeddings: (P, D) text-encoder embeddings of the prompts, in the order of ``flat_prompts``.
    """

    prompts: dict[str, list[str]]
    embeddings: torch.Tensor

    @property
    def classes(self) -> list[str]:
        """The teacher's classes once the vocabulary is applied: the student classes that have prompts."""
        return [c for c, p in self.prompts.items() if p]

    @property
    def flat_prompts(self) -> list[str]:
        """Every prompt, class after class."""
        return [p for c in self.classes for p in self.prompts[c]]

    @property
    def sha256(self) -> str:
        """Hash of the prompts, their classes and their embeddings: equal hashes, equal teacher outputs."""
        digest = hashlib.sha256(json.dumps(self.prompts, sort_keys=False).encode())
        digest.update(self.embeddings.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def groups(self) -> list[list[int]]:
        """Per teacher class, the indices of its prompts in ``flat_prompts``."""
        out, start = [], 0
        for c in self.classes:
            out.append(list(range(start, start + len(self.prompts[c]))))
            start += len(self.prompts[c])
        return out


class PromptMax(nn.Module):
    """Per class, the max of its prompts' logits: (B, P, H, W) -> (B, C, H, W).

    The max of logits is the logit of the max of probabilities (the sigmoid is monotonic), so a class scores as its
    best-matching prompt, which is what a user listing synonyms means.

    Args:
        groups: Per class, the indices of its prompts.
        inner: A module whose output is reduced (YOLO-World's contrastive head, called as ``inner(x, text)``); None
            reduces the input itself (appended to YOLOE's fused class convolutions).
    """

    def __init__(self, groups: list[list[int]], inner: nn.Module | None = None) -> None:
        super().__init__()
        width = max(len(g) for g in groups)
        # pad short groups by repeating their first prompt: a repeat changes no max
        self.register_buffer("index", torch.tensor([g + [g[0]] * (width - len(g)) for g in groups]), persistent=False)
        self.inner = inner

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        """Reduce the prompts' logits of each class to their max.

        Args:
            x: The logits (B, P, H, W), or the inner module's first input.
            *args: The inner module's other inputs (YOLO-World: the text features).

        Returns:
            (B, C, H, W) class logits.
        """
        if self.inner is not None:
            x = self.inner(x, *args)
        return x[:, self.index].amax(2)


def text_encoder(model: nn.Module) -> str:
    """The text encoder Ultralytics builds for a model, as ``build_text_model``'s variant ('clip:ViT-B/32', ...).

    Args:
        model: An open-vocabulary model.

    Returns:
        The variant.
    """
    from ultralytics.nn.tasks import WorldModel

    return WORLD_ENCODER if isinstance(model, WorldModel) else str(getattr(model, "text_model", YOLOE_ENCODER))


def encoder_weights(variant: str) -> tuple[str, list[Path]]:
    """The weights file Ultralytics loads for a text encoder, and where it looks for it before downloading.

    Args:
        variant: ``build_text_model``'s variant.

    Returns:
        The file name and the places it is looked for.
    """
    from ultralytics.utils import SETTINGS, WEIGHTS_DIR

    base, size = variant.split(":")
    if base == "clip":  # clip.load(size, download_root=WEIGHTS_DIR / "clip") names the file after its URL
        name = f"{size.replace('/', '-')}.pt"
        return name, [Path(WEIGHTS_DIR) / "clip" / name]
    name = "mobileclip2_b.ts" if base == "mobileclip2" else "mobileclip_blt.ts"
    return name, [Path(name).resolve(), Path(SETTINGS["weights_dir"]) / name]


def encode_prompts(model: nn.Module, prompts: list[str], teacher: str | Path) -> torch.Tensor:
    """Embed prompts with the model's text encoder, only when its weights are already on disk.

    Args:
        model: The open-vocabulary model.
        prompts: The prompts.
        teacher: The teacher's path, for the error message.

    Returns:
        (P, D) embeddings.

    Raises:
        KDConfigError: The encoder's weights (or the ``clip`` package Ultralytics tokenizes with) are missing: one
            line naming the file and both ways to provide it.
    """
    variant = text_encoder(model)
    name, places = encoder_weights(variant)
    if not any(p.is_file() for p in places):
        raise KDConfigError(
            f"teacher={teacher} is an open-vocabulary model and its text encoder's weights {name} ({variant}) are not "
            f"on disk (looked in {', '.join(str(p.parent) for p in places)}); yolo-kd never downloads: put {name} "
            f"there, or give kd_teacher_embeddings=FILE written by 'yolo-kd embed model={Path(teacher).name} "
            "names=data.yaml out=FILE' on a machine that has it"
        )
    if importlib.util.find_spec("clip") is None:  # Ultralytics would pip-install it on import
        raise KDConfigError(
            f"teacher={teacher}: the text encoder {name} is on disk but Ultralytics tokenizes with the 'clip' package, "
            "which is not installed (pip install git+https://github.com/ultralytics/CLIP.git), or give "
            "kd_teacher_embeddings=FILE"
        )
    from ultralytics.nn.tasks import YOLOEModel

    with torch.no_grad():
        if isinstance(model, YOLOEModel):
            feats = model.get_text_pe(prompts, without_reprta=True)
        else:
            feats = model.get_text_pe(prompts)
    return feats.reshape(len(prompts), -1).float().cpu()


def read_embeddings(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a prompt -> vector mapping from a ``.pt`` (a dict of tensors) or ``.npz`` file.

    Args:
        path: The file.

    Returns:
        Prompt -> 1-D fp32 tensor.

    Raises:
        KDConfigError: No such file, an unreadable one, or one that is not such a mapping, in one line.
    """
    p = Path(path)
    if not p.is_file():
        raise KDConfigError(f"kd_teacher_embeddings={path}: no such file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                loaded: Any = {k: torch.from_numpy(data[k]) for k in data.files}
        else:
            loaded = torch.load(p, map_location="cpu", weights_only=True)  # plain tensors only: no code runs
    except Exception as e:  # truncated or foreign files: one line, not a deep traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise KDConfigError(f"kd_teacher_embeddings={path}: not readable ({type(e).__name__}: {first})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise KDConfigError(f"kd_teacher_embeddings={path}: expected a non-empty mapping prompt -> vector")
    out = {}
    for k, v in loaded.items():
        v = torch.as_tensor(v).float().reshape(-1) if isinstance(v, (torch.Tensor, np.ndarray)) else None
        if not isinstance(k, str) or v is None or not v.numel():
            raise KDConfigError(f"kd_teacher_embeddings={path}: entry {k!r} is not a prompt -> vector pair")
        out[k] = v
    return out


def write_embeddings(path: str | Path, embeddings: dict[str, torch.Tensor]) -> Path:
    """Write a prompt -> vector mapping (``.npz`` by suffix, else a ``.pt`` dict) under a temporary name, then move it.

    Args:
        path: The file to write.
        embeddings: Prompt -> vector.

    Returns:
        The path written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    if path.suffix == ".npz":
        # the .npz layout written entry by entry: np.savez takes the prompts as keyword arguments, and a prompt
        # named 'file' or 'allow_pickle' would collide with its own parameters
        with zipfile.ZipFile(buffer, "w") as archive:
            for k, v in embeddings.items():
                with archive.open(f"{k}.npy", "w") as entry:
                    np.lib.format.write_array(entry, v.float().cpu().numpy(), allow_pickle=False)
    else:
        torch.save({k: v.float().cpu().contiguous() for k, v in embeddings.items()}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def embedding_size(model: nn.Module) -> int:
    """The size of the text embeddings a model's head takes."""
    head = find_detect_head(model)
    return int(getattr(head, "embed", 0) or head.cv3[0][-1].out_channels)


def build_vocabulary(
    model: nn.Module,
    names: list[str],
    prompts: dict | None,
    embeddings: str | Path | None,
    teacher: str | Path,
) -> Vocabulary:
    """The vocabulary for a student's classes: prompts, and their embeddings from a file or the on-disk encoder.

    Args:
        model: The open-vocabulary model.
        names: The student's class names.
        prompts: ``kd_teacher_prompts`` (see ``class_prompts``).
        embeddings: ``kd_teacher_embeddings``: a prompt -> vector file, or None to use the text encoder.
        teacher: The teacher's path, for messages.

    Returns:
        The vocabulary.

    Raises:
        KDConfigError: No prompt at all, prompts missing from the file, vectors of the wrong size, or no encoder.
    """
    by_class = class_prompts(names, prompts)
    vocab = Vocabulary(by_class, torch.zeros(0))
    flat = vocab.flat_prompts
    if not flat:
        raise KDConfigError("kd_teacher_prompts leaves no student class with a prompt: the teacher would see nothing")
    if embeddings is not None:
        table = read_embeddings(embeddings)
        missing = [p for p in flat if p not in table]
        if missing:
            raise KDConfigError(
                f"kd_teacher_embeddings={embeddings} has no vector for {missing}; write one with "
                f"'yolo-kd embed model={Path(teacher).name} names=data.yaml out=FILE' where the text encoder is"
            )
        sizes = sorted({tuple(table[p].shape) for p in flat})
        if len(sizes) > 1:
            raise KDConfigError(f"kd_teacher_embeddings={embeddings}: its vectors differ in shape ({sizes})")
        vocab.embeddings = torch.stack([table[p] for p in flat])
    else:
        vocab.embeddings = encode_prompts(model, flat, teacher)
    size = embedding_size(model)
    if vocab.embeddings.shape[1] != size:
        raise KDConfigError(
            f"kd_teacher_embeddings: vectors of size {vocab.embeddings.shape[1]}, teacher={teacher} takes {size}"
        )
    return vocab


def apply_vocabulary(model: nn.Module, vocab: Vocabulary) -> nn.Module:
    """Turn an open-vocabulary model, in place, into a closed-set detector of the vocabulary's classes.

    YOLOE: the prompt embeddings go through its text head and are fused into the class convolutions (Ultralytics' own
    ``fuse``); a segmentation head becomes a detection head. YOLO-World: the embeddings become its fixed text
    features (its neck reads them too). Classes with several prompts get a ``PromptMax``.

    Args:
        model: The open-vocabulary model (fp32, unfused).
        vocab: The vocabulary.

    Returns:
        The model, eval mode, ``nc``/``names`` those of ``vocab.classes``, ``task`` 'detect'.
    """
    from ultralytics.nn.modules.head import YOLOEDetect, YOLOESegment
    from ultralytics.nn.tasks import YOLOEModel, YOLOESegModel

    model.eval()
    head = find_detect_head(model)
    groups = vocab.groups()
    reduce = any(len(g) > 1 for g in groups)  # one prompt per class: the prompts are the classes
    feats = vocab.embeddings.to(next(model.parameters()).device, next(model.parameters()).dtype)[None]
    if isinstance(head, YOLOEDetect):
        if isinstance(head, YOLOESegment):  # detection only: the masks are no teacher's business here
            head.__class__ = YOLOEDetect
            for name in ("proto", "cv5", "one2one_cv5"):
                if hasattr(head, name):
                    delattr(head, name)
            if type(model) is YOLOESegModel:
                model.__class__ = YOLOEModel
        with torch.no_grad():
            tpe = head.get_tpe(feats)
        head.fuse(tpe)  # class convolutions now output one logit per prompt; the contrastive heads pass them on
        for branch in (head.cv3, getattr(head, "one2one_cv3", None)):
            for seq in branch if reduce and branch is not None else []:
                seq.append(PromptMax(groups))
        # once fused, YOLOE reads its class count from the prompt embeddings it appends: one row per class
        model.pe = tpe[:, [g[0] for g in groups]]
    else:  # WorldDetect
        model.txt_feats = feats
        if reduce:
            head.cv4 = nn.ModuleList(PromptMax(groups, inner) for inner in head.cv4)
    head.nc = len(groups)
    head.no = head.nc + head.reg_max * 4
    model.names = dict(enumerate(vocab.classes))
    model.task = "detect"
    if isinstance(getattr(model, "yaml", None), dict):
        model.yaml["nc"] = head.nc
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def open_vocabulary_teacher(
    model: nn.Module, names: list[str] | None, prompts: dict | None, embeddings: str | Path | None, teacher: str | Path
) -> Vocabulary:
    """Build the vocabulary for the student's classes and apply it to the teacher, in place.

    Args:
        model: The open-vocabulary teacher.
        names: The student's class names (None: unknown, an error).
        prompts: ``kd_teacher_prompts``.
        embeddings: ``kd_teacher_embeddings``.
        teacher: The teacher's path, for messages.

    Returns:
        The vocabulary applied.

    Raises:
        KDConfigError: No student class names, or any ``build_vocabulary`` error.
    """
    if not names:
        raise KDConfigError(
            f"teacher={teacher} is an open-vocabulary model: it needs the student's class names (a data YAML file)"
        )
    vocab = build_vocabulary(model, names, prompts, embeddings, teacher)
    apply_vocabulary(model, vocab)
    return vocab


def embed_prompts(
    model: str | Path, names: str | Path, out: str | Path, prompts: str | dict | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """``yolo-kd embed``: write the prompt embeddings of a student's classes, for machines without the text encoder.

    Args:
        model: The open-vocabulary checkpoint (its text encoder's weights must be on disk here).
        names: The student's data YAML (its ``names``).
        out: The ``.pt`` or ``.npz`` file to write (``kd_teacher_embeddings=`` of a later run).
        prompts: ``kd_teacher_prompts`` (a dict or a YAML file).
        overwrite: Replace an existing ``out`` (default False: refused, it is not this command's file).

    Returns:
        ``{"out": path, "prompts": every prompt written}``.

    Raises:
        KDConfigError: A closed-set model, no names, an existing ``out``, or a missing encoder, in one line.
    """
    from ultralytics.utils import LOGGER

    from .classes import name_list
    from .config import load_kd_config
    from .inputs import read_yaml
    from .teacher import load_teacher_model

    cfg = load_kd_config(kd_teacher_prompts=prompts)  # the trainer's checks, one line each
    if Path(out).exists() and not overwrite:
        raise KDConfigError(f"out={out} exists; give another file or overwrite=True")
    data = read_yaml("names", names)
    classes = [str(n) for n in name_list(data.get("names") if isinstance(data, dict) else None)]
    if not classes:
        raise KDConfigError(f"names={names}: has no 'names' list of classes; give the student's data YAML")
    teacher = load_teacher_model(model)
    if not is_open_vocabulary(teacher):
        raise KDConfigError(f"model={model} has fixed classes: only open-vocabulary models (YOLO-World, YOLOE) embed")
    flat = [p for ps in class_prompts(classes, cfg.kd_teacher_prompts).values() for p in ps]
    if not flat:
        raise KDConfigError("prompts leave no class with a prompt: nothing to embed")
    vectors = encode_prompts(teacher, flat, model)
    path = write_embeddings(out, dict(zip(flat, vectors)))
    LOGGER.info(f"yolo-kd embed: {len(flat)} prompt embeddings ({text_encoder(teacher)}) written to {path}")
    return {"out": str(path), "prompts": flat}
