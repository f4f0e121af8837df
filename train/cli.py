"""Command lines: ssp-train, ssp-eval and ssp-synth (ssp-demo: demo.py). Defaults come from the config
dataclasses (config.py), methods from the prompt-source registry (prompts.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ssprompt.runtime.cli import options_from, postprocess_options
from ssprompt.runtime.options import LABEL_VALUE, POSITIVE, SEED, FiniteFloat, OutputFile, Parsed, PositiveFinite

from .config import ModelConfig, TrainConfig
from .prompts import PROMPT_SOURCES

__all__ = ["train_command", "eval_command", "synth_command"]

LEARN_CHOICES = ("both", "spatial", "semantic")


def _square(text: str) -> int:
    """--prompts: a perfect square (a sqrt(N) x sqrt(N) point grid)."""
    import math

    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer.") from None
    if count < 1 or math.isqrt(count) ** 2 != count:
        raise ValueError(f"{count} is not a perfect square >= 1 (1, 4, 9, 16, ...: the prompts form a point grid).")
    return count


def _user_errors():
    """Exception types that are the user's input, reported as one line and a non-zero exit."""
    from ssprompt.runtime.backends import ModelError

    from .backbones import BackboneError
    from .data.folder import DataError
    from .pack import PackError

    return (BackboneError, DataError, PackError, ModelError, OSError, ValueError)


def _run(job):
    from ssprompt.runtime.files import terminate_like_interrupt

    terminate_like_interrupt()
    try:
        return job()
    except _user_errors() as err:
        raise click.ClickException(str(err)) from None


def _format_metrics(title: str, metrics: dict | None) -> str:
    if not metrics:
        return ""
    lines = [f"{title}: mIoU {100 * metrics['miou']:.1f}  pixel acc {100 * metrics['pixel_accuracy']:.1f}"]
    for name, iou in metrics["per_class"].items():
        lines.append(f"  {name:<20} {'   n/a' if iou is None else f'{100 * iou:6.1f}'}")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def _format_instance_metrics(metrics: dict) -> str:
    """Mask AP (things) and PQ / SQ / RQ, overall and per class, in percent."""
    lines = [f"mask AP {_percent(metrics['ap'])}  AP50 {_percent(metrics['ap50'])}  AP75 {_percent(metrics['ap75'])}",
             f"PQ {_percent(metrics['pq'])}  SQ {_percent(metrics['sq'])}  RQ {_percent(metrics['rq'])}  "
             f"(things {_percent(metrics['pq_things'])}, stuff {_percent(metrics['pq_stuff'])})",
             f"  {'class':<20} {'AP':>5} {'PQ':>5} {'SQ':>5} {'RQ':>5}"]
    for name, quality in metrics["per_class_pq"].items():
        quality = quality or {}
        lines.append(f"  {name:<20} {_percent(metrics['per_class_ap'].get(name))} {_percent(quality.get('pq'))} "
                     f"{_percent(quality.get('sq'))} {_percent(quality.get('rq'))}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_summary(summary: dict) -> None:
    click.echo(
        f"\nwrote {summary['pack']}: {summary['steps']} steps on {summary['images']} images"
        + (f" (resumed at step {summary['resumed_from']})" if summary["resumed_from"] else "")
    )
    click.echo(
        f"encoders: {summary['cache_hits']} cached, {summary['cache_misses']} computed, {summary['encode_seconds']:.1f} s; "
        f"training {summary['train_seconds']:.1f} s; loss {_number(summary['first_loss'])} -> {_number(summary['final_loss'])}"
    )
    if summary["before"] and summary["after"]:
        click.echo(
            f"held-out mIoU: {'initial context' if summary['method'] == 'coop' else 'default prompts'} "
            f"{100 * summary['before']['miou']:.1f} -> "
            f"{summary['method']} {100 * summary['after']['miou']:.1f}"
        )


def _backbone_options(fn):
    for option in reversed([
        click.option("--sam", default="tiny", show_default=True, help="SAM architecture: tiny, vit_b, vit_l, vit_h."),
        click.option("--sam-checkpoint", type=click.Path(dir_okay=False), help="segment-anything checkpoint (.pth)."),
        click.option("--clip", "clip_name", default="tiny", show_default=True, help="open_clip model name (e.g. ViT-B-16) or tiny."),
        click.option("--clip-pretrained", help="open_clip pretrained tag (from the local cache) or weights file."),
        click.option("--random-weights", is_flag=True, help="Random-initialised backbones: full-size without a checkpoint, "
                     "or tiny without its pretrained weights (benchmarks, tests)."),
    ]):
        fn = option(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Dataset folder (classes.txt + images/labels).")
@click.option("--split", default=None, help="Split folder to draw the shots from (e.g. train).")
@click.option("--val-split", default=None, help="Held-out split: mIoU before and after training.")
@click.option("--void", default=TrainConfig.void, show_default=True, type=LABEL_VALUE,
              help="Label value ignored in loss and metrics (at least the number of classes).")
@_backbone_options
@click.option("--shots", default=TrainConfig.shots, show_default=True, type=POSITIVE, help="k labelled images per class.")
@click.option("--prompts", "num_prompts", default=ModelConfig.num_prompts, show_default=True, type=Parsed(_square, "square"),
              help="Spatial prompts N (a square: sqrt(N) x sqrt(N) point grid).")
@click.option("--method", type=click.Choice(list(PROMPT_SOURCES)), default=ModelConfig.method, show_default=True,
              help="SSPrompt, or a baseline trained and evaluated the same way: zero-shot (default prompts, no training), "
                   "coop (learnable text context through CLIP's text tower), vspl (learnable point coordinates).")
@click.option("--coop-init", default=ModelConfig.coop_init, show_default=True, help="CoOp: words whose embeddings start the context ('' = random).")
@click.option("--coop-context", type=POSITIVE, help="CoOp: random context vectors, with --coop-init '' [default: 16].")
@click.option("--learn", type=click.Choice(LEARN_CHOICES), default="both", show_default=True, help="SSPrompt ablation: which prompts learn.")
@click.option("--fixed-weights", is_flag=True, help="SSPrompt ablation: keep fusion weights at 0.5 (embeddings learn, weights do not).")
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, type=POSITIVE)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=POSITIVE)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=TrainConfig.optimizer, show_default=True)
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=PositiveFinite())
@click.option("--weight-decay", default=TrainConfig.weight_decay, show_default=True, type=FiniteFloat(min=0.0))
@click.option("--short-side", default=TrainConfig.short_side, show_default=True, type=click.IntRange(min=0),
              help="Labels resized so their shorter side is this (0: keep).")
@click.option("--no-flip", is_flag=True, help="No random horizontal flips.")
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=SEED)
@click.option("--cache-dir", default="", help="Encoder feature cache (default ~/.cache/ssprompt or $SSPROMPT_CACHE).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--out", required=True, type=OutputFile(), help="Pack to write (pack.pt).")
@click.option("--weights-plot", type=OutputFile(), help="Also draw the learned fusion weights (PNG).")
@click.option("--force", is_flag=True, help="Overwrite an existing pack.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_command(**opts) -> None:
    """Learn SSPrompt prompts for a frozen SAM + CLIP from k labelled images per class.

    Re-running after an interrupt resumes from OUT.ckpt when the settings are the same.
    """
    from .pipeline import train_pack

    out = Path(opts["out"])
    if out.exists() and not opts["force"]:
        raise click.ClickException(f"{out}: exists; pass --force to overwrite")
    if opts["method"] != "ssprompt" and (opts["learn"] != "both" or opts["fixed_weights"]):
        raise click.ClickException(f"--learn and --fixed-weights are SSPrompt ablations; --method {opts['method']} has no fusion weights")
    if opts["method"] != "coop" and (opts["coop_init"] != ModelConfig.coop_init or opts["coop_context"] is not None):
        raise click.ClickException(f"--coop-init and --coop-context set up CoOp; they do not apply to --method {opts['method']}")
    if opts["coop_init"] and opts["coop_context"] is not None:
        raise click.ClickException("--coop-context sets the number of random context vectors: pass it with --coop-init ''")

    def job():
        from ssprompt.runtime.files import exclusive

        model_config = ModelConfig(
            sam=opts["sam"], sam_checkpoint=opts["sam_checkpoint"], clip=opts["clip_name"],
            clip_pretrained=opts["clip_pretrained"], random_weights=opts["random_weights"], method=opts["method"],
            coop_init=opts["coop_init"], coop_context=opts["coop_context"] or ModelConfig.coop_context,
            num_prompts=opts["num_prompts"],
            learn_spatial=opts["learn"] in ("both", "spatial"),
            learn_semantic=opts["learn"] in ("both", "semantic"), learn_weights=not opts["fixed_weights"],
        )
        config = TrainConfig(
            data=opts["data"], split=opts["split"], val_split=opts["val_split"], void=opts["void"],
            shots=opts["shots"], seed=opts["seed"], epochs=opts["epochs"], batch_size=opts["batch_size"],
            optimizer=opts["optimizer"], lr=opts["lr"], weight_decay=opts["weight_decay"],
            short_side=opts["short_side"], flip=not opts["no_flip"], cache_dir=opts["cache_dir"],
        )
        with exclusive(out, "pack"):  # one run writes a pack (and its .ckpt) at a time
            if out.exists() and not opts["force"]:  # written by a run that finished since the check above
                raise FileExistsError(f"{out}: exists; pass --force to overwrite")
            return train_pack(model_config, config, out, opts["device"], progress=not opts["quiet"],
                              weights_plot=opts["weights_plot"], log=click.echo)

    summary = _run(job)
    _print_summary(summary)
    if summary["after"]:
        click.echo(_format_metrics("learned prompts", summary["after"]))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prompts", "pack", required=True, type=click.Path(dir_okay=False), help="Prompt pack (pack.pt).")
@click.option("--data", required=True, type=click.Path(file_okay=False))
@click.option("--split", default=None)
@click.option("--void", default=None, type=LABEL_VALUE, help="Label value ignored (default: the pack's).")
@click.option("--default-prompts", is_flag=True, help="Evaluate the untrained default prompts (zero-shot baseline).")
@click.option("--sam-checkpoint", type=click.Path(dir_okay=False), help="Default: the path recorded in the pack.")
@click.option("--clip-pretrained", help="Default: the tag or path recorded in the pack.")
@click.option("--cache-dir", default="")
@click.option("--device", default="auto", show_default=True)
@click.option("--instances/--no-instances", default=True, show_default=True,
              help="Also mask AP and PQ / SQ / RQ, where the data has instance maps and the pack thing classes.")
@postprocess_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (miou, per_class, ap, pq, sq, rq, ...).")
def eval_command(pack, data, split, void, default_prompts, sam_checkpoint, clip_pretrained, cache_dir, device, instances,
                 as_json, **postprocess) -> None:
    """mIoU and per-class IoU of a prompt pack on a labelled folder: the label maps the exported graph
    gives (what ssp-run writes), scored at each label's own size; with instance maps, also COCO mask AP
    and PQ of what ssp-run --task instance / panoptic writes."""
    from .pipeline import evaluate_pack

    def job():
        instance_options, panoptic_options = options_from(postprocess)
        return evaluate_pack(pack, data, split, void, default_prompts, sam_checkpoint, clip_pretrained, cache_dir, device,
                             progress=not as_json, instances=instances, instance_options=instance_options,
                             panoptic_options=panoptic_options)

    metrics = _run(job)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    title = "default prompts (zero-shot)" if metrics["prompts"] == "default" else f"{metrics['method']} prompts"
    click.echo(_format_metrics(f"{title} on {metrics['data']} ({metrics['images']} images)", metrics))
    if "pq" in metrics:
        click.echo(_format_instance_metrics(metrics))
    elif "instance_note" in metrics:
        click.echo(metrics["instance_note"])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("root", type=OutputFile(folder=True))
@click.option("--train", "n_train", default=32, show_default=True, type=POSITIVE)
@click.option("--val", "n_val", default=16, show_default=True, type=POSITIVE)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--world", is_flag=True, help="The miniature world's shifted task (the demo's data) instead of plain shapes.")
def synth_command(root, n_train, n_val, seed, world) -> None:
    """Generate a dataset of coloured shapes (classes.txt, train/ and val/) in ROOT."""
    from .synthetic import make_synthetic
    from .world import make_world

    from ssprompt.runtime.files import exclusive

    make = make_world if world else make_synthetic

    def job():
        with exclusive(Path(root), "dataset"):
            return make(root, n_train=n_train, n_val=n_val, seed=seed)

    path = _run(job)
    click.echo(f"{'world' if world else 'synthetic'} dataset in {path}")


if __name__ == "__main__":
    sys.exit(train_command())
