"""Pictures of what was learned: the fusion weights (the paper's Figure 3b)."""

from __future__ import annotations

from pathlib import Path

import torch

from ssprompt.runtime.files import atomic_path

from .pack import Pack

__all__ = ["plot_fusion_weights"]


def plot_fusion_weights(pack: Pack, path: str | Path) -> Path:
    """Bar charts of the learned weights w = sigmoid(logit): one bar per class, one per spatial prompt.

    A weight above 0.5 means the learned prompt outweighs the default one in the fusion.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    semantic = torch.sigmoid(pack.learned["semantic_weight_logit"]).numpy()  # SSPrompt's FusedPrompts names
    spatial = torch.sigmoid(pack.learned["spatial_weight_logit"]).numpy()
    fig, (ax_sem, ax_spa) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(semantic) + 2), 6.5))
    colours = [[c / 255 for c in rgb] for rgb in pack.palette]
    ax_sem.bar(range(len(semantic)), semantic, color=colours, edgecolor="black", linewidth=0.5)
    ax_sem.set_xticks(range(len(semantic)), pack.class_names, rotation=35, ha="right")
    ax_sem.set_ylabel("semantic weight")
    ax_sem.set_title("Learned fusion weights w (start 0.5; above: the learned prompt dominates)", fontsize=10)
    ax_spa.bar(range(len(spatial)), spatial, color="#4c72b0", width=1.0)
    ax_spa.set_xlabel("spatial prompt (grid point, row-major)")
    ax_spa.set_ylabel("spatial weight")
    for ax in (ax_sem, ax_spa):
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
