"""Plot the accuracy benchmark: validation mAP50-95 per epoch, mean over seeds, for each method.

Writes a Mermaid chart (text, rendered by GitHub in README/BENCHMARKS) to stdout and a PNG to the runs folder (not
committed: plots there are regenerated from the runs). With ``--table`` it prints a Markdown table instead, every
``--every`` epochs, with each method's difference from the first one; runs still in progress may be shorter (their
later cells stay empty), which is how a part-way comparison is read from the run folders rather than typed.

    python scripts/plot_benchmarks.py --runs runs/bench --methods baseline native default logit feature
    python scripts/plot_benchmarks.py --runs runs/bench/finetune/e300 --methods baseline default --seeds 0 --every 25 \
        --table
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path


def curve(run: Path) -> list[float]:
    with open(run / "results.csv") as f:
        return [float({k.strip(): v for k, v in r.items()}["metrics/mAP50-95(B)"]) for r in csv.DictReader(f)]


def table(curves: dict[str, list[float]], every: int) -> str:
    """A Markdown table: mAP50-95 every ``every`` epochs (and at the longest run's last), then the difference in points
    from the first method at each epoch both have reached.

    Args:
        curves: Method -> mean mAP50-95 per epoch (runs may differ in length).
        every: The column step in epochs.

    Returns:
        The table.
    """
    n = max(len(c) for c in curves.values())
    epochs = sorted({*range(every - 1, n, every), n - 1})
    ref_name, ref = next(iter(curves.items()))
    rows = [
        "| epoch | " + " | ".join(str(i + 1) for i in epochs) + " |",
        "|---|" + "---|" * len(epochs),
    ]
    for method, c in curves.items():
        rows.append(f"| {method} | " + " | ".join(f"{c[i]:.3f}" if i < len(c) else "" for i in epochs) + " |")
    for method, c in list(curves.items())[1:]:
        diffs = [f"{100 * (c[i] - ref[i]):+.1f}" if i < min(len(c), len(ref)) else "" for i in epochs]
        rows.append(f"| {method} - {ref_name} (points) | " + " | ".join(diffs) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/bench")
    p.add_argument("--methods", nargs="+", default=["baseline", "native", "default"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the same seeds for every method")
    p.add_argument("--every", type=int, default=1, help="chart every Nth epoch (and the last), for long schedules")
    p.add_argument("--table", action="store_true", help="print a Markdown table (runs may be part-way), no chart")
    a = p.parse_args()
    if a.every < 1:
        p.error(f"--every must be 1 or more, got {a.every}")
    runs = Path(a.runs)
    curves = {}
    for method in a.methods:  # a missing run is an error: a mean over other seeds would not compare
        per_seed = [curve(runs / f"{method}_s{seed}") for seed in a.seeds]
        n = min(len(c) for c in per_seed)
        curves[method] = [statistics.mean(c[i] for c in per_seed) for i in range(n)]
    if a.table:
        print(table(curves, a.every))
        return
    n = min(len(c) for c in curves.values())
    top = max(max(c) for c in curves.values())
    # the last epoch is always charted: it is the figure the tables report
    epochs = sorted({*range(a.every - 1, n, a.every), n - 1})
    lines = [
        "```mermaid",
        "xychart-beta",
        f'    title "val mAP50-95 per epoch (mean of seeds {", ".join(map(str, a.seeds))}): {", ".join(curves)}"',
        f"    x-axis [{', '.join(str(i + 1) for i in epochs)}]",
        f'    y-axis "mAP50-95" 0 --> {round(top * 1.15, 3)}',
    ]
    lines += [f"    line [{', '.join(f'{c[i]:.4f}' for i in epochs)}]" for c in curves.values()]
    lines.append("```")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95 (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(runs / "accuracy_curves.png", dpi=100)
    print(f"\n(PNG: {runs / 'accuracy_curves.png'})")


if __name__ == "__main__":
    main()
