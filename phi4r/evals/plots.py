"""PNG plots of an evaluation (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def _by_task(samples: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for s in samples:
        groups[s["task"]].append(s)
    return groups


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def accuracy_by_difficulty(ax, summary: dict) -> None:
    for task, levels in summary["metrics"]["by_difficulty"].items():
        x = [int(level) for level in levels]
        y = [100 * m["mean"] for m in levels.values()]
        err = [100 * (m["std"] or 0) for m in levels.values()]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=task)
    ax.set(xlabel="difficulty", ylabel="accuracy (%)", ylim=(-5, 105),
           title="Accuracy by difficulty (mean ± std over runs)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax)


def length_distribution(axes, samples: list[dict]) -> None:
    for ax, key, title in zip(axes, ("response_tokens", "reasoning_tokens"), ("response", "reasoning")):
        for task, group in _by_task(samples).items():
            values = [s[key] for s in group if s.get(key) is not None]
            if values:
                ax.hist(values, bins=20, histtype="step", linewidth=1.5, label=task)
        ax.set(xlabel="tokens", ylabel="samples", title=f"{title} length")
        _legend(ax)


def accuracy_vs_length(ax, samples: list[dict], bins: int = 8) -> None:
    """Mean score of the samples in each length quantile bin, per task."""
    for task, group in _by_task(samples).items():
        group = sorted((s for s in group if s.get("response_tokens") is not None), key=lambda s: s["response_tokens"])
        if not group:
            continue
        chunks = [c for c in np.array_split(np.arange(len(group)), min(bins, len(group))) if len(c)]
        x = [np.mean([group[i]["response_tokens"] for i in c]) for c in chunks]
        y = [100 * np.mean([group[i]["score"] for i in c]) for c in chunks]
        ax.plot(x, y, marker="o", label=task)
    ax.set(xlabel="response tokens (bin mean)", ylabel="accuracy (%)", ylim=(-5, 105),
           title="Accuracy against response length")
    _legend(ax)


def write_plots(out_dir, summary: dict, samples: list[dict]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy_by_difficulty.png": (1, lambda axes: accuracy_by_difficulty(axes[0], summary)),
        "length_distribution.png": (2, lambda axes: length_distribution(axes, samples)),
        "accuracy_vs_length.png": (1, lambda axes: accuracy_vs_length(axes[0], samples)),
    }
    paths = []
    for name, (ncols, draw) in figures.items():
        fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
        draw(list(axes[0]))
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)
    return paths
