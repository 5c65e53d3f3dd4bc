"""Labeled and unlabeled images in one training set (the list file ``unlabeled=`` trains on), and when sample mixing
is on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import KDConfig, KDConfigError
from .dataset import image_files, is_image_name
from .files import write_text_atomic
from .report import log_mixed_list

MIXING_AUGMENTATIONS = ("mosaic", "mixup", "cutmix")  # Ultralytics' augmentations that put several images in a sample


def labeled_images(img_path: str | Path | list[str | Path]) -> list[str]:
    """Every image of an Ultralytics ``train=`` entry: folders, image list files, or a list of them.

    Args:
        img_path: As Ultralytics passes it to ``build_dataset``.

    Returns:
        Image paths, as Ultralytics reads them: a folder's as absolute paths through any links (Ultralytics finds each
        label by the image's own path, so a linked image keeps its link's), a list file's image lines as written,
        ``./`` lines made relative to the file's folder.
    """
    images: list[str] = []
    for p in img_path if isinstance(img_path, list) else [img_path]:
        p = Path(p)
        if p.is_dir():
            images += [os.path.abspath(f) for f in image_files(p)]
        else:  # an image list file: Ultralytics keeps only its lines with an image suffix
            for line in p.read_text().splitlines():
                line = line.strip()
                if is_image_name(line):
                    images.append(str(p.parent / line[2:]) if line.startswith("./") else line)
    return images


def check_unlabeled(folder: str | Path, unlabeled: set[str], labeled: list[str], val: list[str]) -> None:
    """Refuse an ``unlabeled=`` folder whose images are not unlabeled ones, in one line.

    Args:
        folder: The ``unlabeled=`` folder.
        unlabeled: Its images.
        labeled: The labeled training images.
        val: The validation images.

    Raises:
        KDConfigError: Some of its images are validation images (training on them would leak the validation set),
            labeled training images (they would get the teacher's boxes on top of their labels), or have label files
            where Ultralytics looks for them (it would train on those labels).
    """
    from ultralytics.data.utils import img2label_paths

    ours = {os.path.realpath(f) for f in unlabeled}
    for images, what in (
        (val, "validation images: training on them leaks the validation set into training"),
        (labeled, "labeled training images: they would get the teacher's boxes on top of their labels"),
    ):
        common = sorted(ours & {os.path.realpath(f) for f in images})
        if common:
            raise KDConfigError(f"unlabeled={folder}: {len(common)} of its images are also {what} (e.g. {common[0]})")
    files = sorted(unlabeled)
    labels = [label for label in img2label_paths(files) if os.path.isfile(label)]
    if labels:
        raise KDConfigError(
            f"unlabeled={folder}: {len(labels)} of its images have label files where Ultralytics reads them (e.g. "
            f"{labels[0]}), which it would train on; give a folder of images without labels"
        )


def mixed_image_list(
    labeled: list[str], unlabeled_dir: str | Path, ratio: float, seed: int
) -> tuple[list[str], set[str]]:
    """The training image list with unlabeled images mixed in, and the set of unlabeled files.

    Every labeled image appears once; unlabeled images, in a seeded random order, are cycled until they make up
    ``ratio`` of the list, so an epoch's batches hold that share on average and go through the very same
    augmentation pipeline.

    Args:
        labeled: The labeled images.
        unlabeled_dir: The folder of unlabeled images.
        ratio: Share of unlabeled slots in the list, in (0, 0.95] (``KDConfig.unlabeled_ratio``).
        seed: The run's seed (the same list on every DDP rank and on resume).

    Returns:
        The list (labeled first, repeats allowed) and the set of every unlabeled file.
    """
    unlabeled = [str(f) for f in image_files(Path(unlabeled_dir))]
    n_unlabeled = max(1, round(len(labeled) * ratio / (1 - ratio)))
    order = torch.randperm(len(unlabeled), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [unlabeled[order[i % len(unlabeled)]] for i in range(n_unlabeled)]
    return labeled + picked, set(unlabeled)


def write_image_list(images: list[str], path: Path) -> None:
    """Write an image list (one path a line) whole, then rename it into place.

    Args:
        images: The paths.
        path: The list file.
    """
    write_text_atomic(path, "\n".join(images) + "\n")  # DDP ranks write the same list, each through its own temp


def write_mixed_list(
    img_path: str | Path | list[str | Path],
    unlabeled_dir: str | Path,
    ratio: float,
    seed: int,
    path: Path,
    val: str | Path | list[str | Path] | None = None,
) -> tuple[int, int, set[str]]:
    """Write the training list with unlabeled images mixed in (``labeled_images`` + ``mixed_image_list``), after
    ``check_unlabeled``.

    Args:
        img_path: The training split, as Ultralytics passes it to ``build_dataset``.
        unlabeled_dir: The folder of unlabeled images.
        ratio: Share of unlabeled slots in the list.
        seed: The run's seed.
        path: The list file to write.
        val: The validation split (the data YAML's ``val``), which the unlabeled images must not hold.

    Returns:
        Labeled images in the list, unlabeled slots in it, and the set of every unlabeled file.
    """
    labeled = labeled_images(img_path)
    images, unlabeled = mixed_image_list(labeled, unlabeled_dir, ratio, seed)
    check_unlabeled(unlabeled_dir, unlabeled, labeled, labeled_images(val) if val else [])
    write_image_list(images, path)
    return len(labeled), len(images) - len(labeled), unlabeled


def unlabeled_training_list(
    img_path: str | Path | list[str | Path],
    cfg: KDConfig,
    args: Any,
    epochs: int,
    save_dir: Path,
    val: str | Path | list[str | Path] | None = None,
) -> tuple[Path, set[str]]:
    """Write the run's training list with ``unlabeled=`` mixed in, and say in the log what it holds.

    Args:
        img_path: The training split, as Ultralytics passes it to ``build_dataset``.
        cfg: The KD settings (``unlabeled``, ``unlabeled_ratio``).
        args: Ultralytics' train args (``seed`` and the sample-mixing augmentations).
        epochs: Epochs in the run.
        save_dir: The run folder, where the list is written.
        val: The validation split (the data YAML's ``val``).

    Returns:
        The list file and the set of every unlabeled file.
    """
    path = save_dir / "train_with_unlabeled.txt"
    n_labeled, n_slots, unlabeled = write_mixed_list(img_path, cfg.unlabeled, cfg.unlabeled_ratio, args.seed, path, val)
    log_mixed_list(n_labeled, n_slots, len(unlabeled), cfg.unlabeled_ratio, path, sample_mixing(args, 0, epochs))
    return path, unlabeled


def sample_mixing(args: Any, epoch: int, epochs: int) -> list[str]:
    """The sample-mixing augmentations on in an epoch.

    Args:
        args: Ultralytics' train args (``mosaic``, ``mixup``, ``cutmix``, ``close_mosaic``).
        epoch: The epoch, from 0.
        epochs: Epochs in the run.

    Returns:
        Their names; none once Ultralytics closes mosaic (it turns every mixing augmentation off for the last
        ``close_mosaic`` epochs).
    """
    close = getattr(args, "close_mosaic", 0)
    if close and epoch >= epochs - close:
        return []
    return sorted(k for k in MIXING_AUGMENTATIONS if getattr(args, k, 0))
