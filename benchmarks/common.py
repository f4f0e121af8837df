"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable


def run_in_worker(script: Path, args: list[str], result: Path) -> tuple[dict | None, str]:
    """`python script *args` in a fresh process (so its peak memory is its own), its progress lines (those
    that start with four spaces) echoed live; the worker writes its JSON result to `result`.

    Returns:
      (dict | None): the result, None when the worker failed.
      (str): the worker's last error line, "" when it succeeded.
    """
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr:
            tail.append(line.rstrip())
            if line.startswith("    "):
                print(line.rstrip(), flush=True)
    if process.returncode != 0:
        print("\n".join(tail), file=sys.stderr, flush=True)
        return None, next((line for line in reversed(tail) if line.strip()), f"exit status {process.returncode}").strip()
    return json.loads(result.read_text()), ""


def fullsize_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments every full-size benchmark takes: the architecture and the task's size."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sam", default="vit_b", help="SAM architecture (random weights)")
    parser.add_argument("--clip", default="ViT-B-16", help="open_clip model name (random weights)")
    parser.add_argument("--prompts", type=int, default=100, help="spatial prompts N")
    parser.add_argument("--classes", type=int, default=11, help="classes C (CamVid has 11)")
    return parser


def random_fullsize_model(sam: str, clip: str, prompts: int, classes: int, random_weights: bool = True):
    """(SSPrompt, its backbones): full-size backbones holding seeded random weights, untrained default prompts.
    `random_weights` False: the backbones' own weights (the shipped tiny ones for "tiny").

    Export and runtime behaviour (graph, sizes, latency, FLOPs) do not depend on weight values.
    """
    from ssprompt.train.backbones import load_backbones
    from ssprompt.train.config import ModelConfig
    from ssprompt.train.model import SSPrompt

    backbones = load_backbones(sam, clip, random_weights=random_weights)
    names = [f"class {i}" for i in range(classes)]
    config = ModelConfig(sam=sam, clip=clip, random_weights=random_weights, num_prompts=prompts)
    return SSPrompt(backbones, names, config), backbones


def random_fullsize_pack(sam: str, clip: str, prompts: int, classes: int, path: Path, random_weights: bool = True,
                         thing_classes: tuple[int, ...] = ()) -> Path:
    """random_fullsize_model saved as a pack at `path`, `thing_classes` marked countable (instance, panoptic)."""
    from ssprompt.runtime.palette import default_palette
    from ssprompt.train.pack import build_pack, save_pack

    model, backbones = random_fullsize_model(sam, clip, prompts, classes, random_weights)
    save_pack(build_pack(model, backbones, default_palette(classes), 255, {}, {}, thing_classes), path)
    return path


def demo_world_pack(work: Path) -> Path:
    """`work`/pack.pt: the demo's training (pretrained tiny backbones, DEMO_SETTINGS) on the demo's generated world task
    (`work`/data, DEMO_WORLD; its val split held out), made once and reused."""
    from ssprompt.train.config import ModelConfig, TrainConfig
    from ssprompt.train.demo import DEMO_SETTINGS, DEMO_WORLD
    from ssprompt.train.pipeline import train_pack
    from ssprompt.train.world import make_world

    pack = work / "pack.pt"
    if not pack.is_file():
        data = make_world(work / "data", **DEMO_WORLD)
        s = DEMO_SETTINGS
        config = TrainConfig(data=str(data), split="train", val_split="val", shots=s["shots"], epochs=s["epochs"],
                             optimizer=s["optimizer"], lr=s["lr"], short_side=s["short_side"], cache_dir=str(work / "cache"))
        train_pack(ModelConfig(num_prompts=s["num_prompts"]), config, pack, progress=False, log=lambda *_: None)
    return pack


def gpu_description() -> str | None:
    """GPU name, driver and CUDA versions, and onnxruntime's version and providers; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    driver = "unknown"
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:  # noqa: BLE001 - no NVML: the driver version stays unknown
        pass
    from ssprompt.runtime.gpu import gpu_name

    text = f"GPU: {gpu_name() or 'unknown'}, driver {driver}, CUDA {torch.version.cuda}"
    try:
        import onnxruntime

        text += f"; onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    except ImportError:
        pass
    return text


REPO = Path(__file__).resolve().parent.parent


def _is_path(argument: str) -> bool:
    """Whether a command-line argument names a file or folder by a path that depends on the machine."""
    return argument.startswith(("/", "~", "../")) or argument == ".."


def command_line(argv: list[str]) -> str:
    """`argv` as a result table names it: a path inside the repository relative to it, one outside (a temporary
    folder, a shared data set) by its role (`--work WORK`; a positional one `PATH/` and its last two names),
    so a table says what was run and nothing of the machine that ran it."""
    words = []
    for i, argument in enumerate(argv):
        option, equals, value = argument.partition("=") if argument.startswith("--") else ("", "", argument)
        if not _is_path(value):
            words.append(argument)
            continue
        path = Path(value).expanduser().resolve()
        if path.is_relative_to(REPO):
            value = str(path.relative_to(REPO)) or "."
        elif equals:  # --work=/tmp/x
            value = option.lstrip("-").replace("-", "_").upper()
        elif i > 0 and argv[i - 1].startswith("--"):  # --work /tmp/x
            value = argv[i - 1].lstrip("-").replace("-", "_").upper()
        else:
            value = "/".join(["PATH", *path.parts[-2:]])
        words.append(f"{option}={value}" if equals else value)
    return " ".join(words)


def header(title: str) -> list[str]:
    import torch

    lines = [
        f"# {title}",
        "",
        f"Command: `python {command_line(sys.argv)}`  ",
        f"Date: {datetime.date.today()}; machine: {platform.machine()}, {torch.get_num_threads()} CPU threads; "
        f"torch {torch.__version__}, Python {platform.python_version()}  ",
    ]
    gpu = gpu_description()
    if gpu:
        lines.append(gpu + "  ")
    return lines


def table_lines(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines; a "|" inside a cell is escaped, or it would split the cell."""
    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(columns), "|" + "---|" * len(columns), *(line(row) for row in rows)]


def write_report(path: Path, lines: list[str], note: str = "") -> None:
    """The markdown report, written atomically, and echoed to the terminal; `note` (the run's conditions, in
    the words of whoever ran it) goes last."""
    from ssprompt.runtime.files import write_text_atomic

    if note:
        lines = [*lines, "", f"Run note: {note}"]
    write_text_atomic(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


def parity_cells(parity) -> list[str]:
    """An export.parity.Parity as table cells: label agreement %, mask-logit mean and max error, confidence max
    error, whether it passes its gate (the last five columns of the op-type studies)."""
    return [f"{100 * parity.label_agreement:.3f}", f"{parity.mask_mean_error:.2e}", f"{parity.mask_max_error:.2e}",
            f"{parity.confidence_max_error:.2e}", "yes" if parity.passed else "no"]


def environment_line(environment: dict) -> str:
    """ssp-bench's environment (backend, device, versions) as one markdown line; the graph's own fields left out."""
    return "  ".join(f"{k}: {v}" for k, v in environment.items() if k not in ("model", "precision")) + "  "


def write_disagreement_plot(path: Path, rows: list[list[str]], title: str, gate_percent: float) -> None:
    """Bars of the % of labels that differ from PyTorch FP32 (100 - row[3]) a variant (row[0]), and the gate's line."""
    def draw(ax) -> None:
        ax.barh(range(len(rows)), [100 - float(r[3]) for r in rows], color="#4c72b0")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(gate_percent, color="#c44e52", linestyle="--", label=f"gate: {gate_percent:g} % of labels may differ")
        ax.set_xlabel("% of pixel labels that differ from PyTorch FP32")
        ax.legend(fontsize=7)

    write_plot(path, draw, title, size=(8, 1.5 + 0.3 * len(rows)))


def write_plot(path: Path, draw: Callable, title: str, panels: int = 1, size: tuple[float, float] = (7, 3.6)) -> None:
    """One matplotlib figure of `panels` axes side by side, drawn by `draw(*axes)`, saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssprompt.runtime.files import atomic_path

    fig, axes = plt.subplots(1, panels, figsize=size, squeeze=False)
    try:
        draw(*axes[0])
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
