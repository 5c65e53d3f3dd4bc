"""Probe: what the ``|gamma|`` ranking of ``kd_init_channels=importance`` picks in a teacher, against another one.

For two checkpoints of the same architecture (typically a fine-tuned teacher and the checkpoint it was fine-tuned
from, or two snapshots of one run), over every normalisation layer outside the Detect head:

- ``top-third overlap``: the share of one's largest-``|gamma|`` third of channels that is also in the other's
  (chance: one third), averaged over layers;
- ``rank r``: the Spearman correlation of the two ``|gamma|`` rankings, averaged over layers;
- ``rank r vs change``: the Spearman correlation between the second checkpoint's ranking and the change of ``gamma``
  from the first to the second (near 1: the ranking is the channels that training moved up);
- per checkpoint, the median and largest coefficient of variation of ``|gamma|`` over a layer's channels.

No images and no training: seconds.

    python scripts/probe_gamma_ranking.py FROM.pt TO.pt
"""

from __future__ import annotations

import argparse
from statistics import median

import torch

from yolo_kd.checkpoint import load_model_file


def gammas(path: str) -> dict[str, torch.Tensor]:
    """``|gamma|`` of every normalisation layer outside the last (Detect) layer, by state-dict key."""
    model = load_model_file(path)
    head = f"model.{len(model.model) - 1}."
    sd = model.state_dict()
    return {k: v.detach().float().abs() for k, v in sd.items() if k.endswith("bn.weight") and not k.startswith(head)}


def ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of ``v`` (ties broken by position), as floats."""
    return v.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of two vectors of one length."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def top_third(v: torch.Tensor) -> set[int]:
    """Indices of the largest third of ``v`` (at least one)."""
    return set(torch.topk(v, max(1, round(len(v) / 3))).indices.tolist())


def main() -> None:
    """Print the comparison of two checkpoints' ``|gamma|`` rankings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", help="the earlier checkpoint (e.g. the one a teacher was fine-tuned from)")
    p.add_argument("second", help="the later checkpoint (e.g. the fine-tuned teacher)")
    args = p.parse_args()
    a, b = gammas(args.first), gammas(args.second)
    keys = [k for k in b if k in a and a[k].shape == b[k].shape]
    if not keys:
        raise SystemExit("the two checkpoints share no normalisation layer of one shape: not one architecture")
    overlap = [len(top_third(a[k]) & top_third(b[k])) / len(top_third(a[k])) for k in keys]
    rank_r = [spearman(a[k], b[k]) for k in keys]
    change_r = [spearman(b[k], b[k] - a[k]) for k in keys]
    n = len(keys)
    print(f"{n} layers: top-third overlap {sum(overlap) / n:.3f} (chance 0.333), rank r {sum(rank_r) / n:.3f},", end="")
    print(f" rank r vs change {sum(change_r) / n:.3f}")
    for name, g in (("first", a), ("second", b)):
        cv = [float(v.std() / v.mean()) for v in g.values()]
        print(f"{name}: |gamma| coefficient of variation per layer: median {median(cv):.4f}, max {max(cv):.4f}")


if __name__ == "__main__":
    main()
