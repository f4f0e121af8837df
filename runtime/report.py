"""ssp-bench's report: the environment a table's header names, the markdown table, the latency plot, JSON rows."""

from __future__ import annotations

import platform
from dataclasses import asdict

import numpy as np

from .bench import BenchRow
from .errors import OptionError
from .runner import Runner

__all__ = ["environment", "markdown_table", "plot_latency", "rows_as_dicts"]


def environment(runner: Runner) -> dict:
    """Backend, precision, device and versions, for the table's header."""
    info = {
        "model": str(runner.path),
        "backend": runner.backend,
        "device": runner.device,
        "cuda graph": getattr(runner, "cuda_graph", False),
        "precision": runner.metadata.precision if runner.metadata else "unknown",
        "input_size": runner.metadata.input_size if runner.metadata else None,
        "prompts": runner.metadata.num_prompts if runner.metadata else None,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for module in ("onnxruntime", "tensorrt"):
        try:
            version = getattr(__import__(module), "__version__", None)  # a folder of type stubs imports, unversioned
        except ImportError:
            continue
        if version is not None:
            info[module] = version
    return info


def markdown_table(rows: list[BenchRow], info: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        "  ".join(f"{k}: {v}" for k, v in info.items()) + "  ",
        "",
        "| batch | p50 ms | p90 ms | p99 ms | images/s | host peak RSS MB | GPU peak MB | timing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gpu = "n/a" if r.gpu_peak_mb is None else f"{r.gpu_peak_mb:.0f} ({r.gpu_memory_scope})"
        lines.append(f"| {r.batch} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.images_per_s:.2f} | "
                     f"{r.host_peak_rss_mb:.0f} | {gpu} | {r.timing} |")
    return "\n".join(lines) + "\n"


def plot_latency(rows: list[BenchRow], info: dict, path) -> None:
    """Latency (p50, with p90-p99 whiskers) and throughput against batch size, as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise OptionError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r.batch for r in rows]
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_lat.plot(batches, [r.p50_ms for r in rows], "o-", label="p50")
    ax_lat.fill_between(batches, [r.p90_ms for r in rows], [r.p99_ms for r in rows], alpha=0.25, label="p90-p99")
    ax_lat.set_xlabel("batch")
    ax_lat.set_ylabel("ms per call")
    ax_lat.legend()
    ax_thr.plot(batches, [r.images_per_s for r in rows], "s-", color="#dd8452")
    ax_thr.set_xlabel("batch")
    for ax in (ax_lat, ax_thr):
        ax.set_xticks(batches)
    ax_thr.set_ylabel("images / s")
    fig.suptitle(f"{info['backend']} ({info['device']}), {info['precision']}")
    fig.tight_layout()
    from .files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
