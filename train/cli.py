"""Command lines: ssp-train, ssp-eval and ssp-synth (ssp-demo: demo.py). Defaults come from the config
dataclasses (config.py); ssp-train's --method and each method's own options from the method registry
(methods/registry.py), made from the methods' options dataclasses."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import Field, asdict, fields
from pathlib import Path

import click
from click.core import ParameterSource

from ssprompt.runtime.cli import options_from, postprocess_options
from ssprompt.runtime.options import (LABEL_VALUE, POSITIVE, SEED, FiniteFloat, OutputFile, Parsed, PositiveFinite,
                                      reported_errors)

from .config import ModelConfig, TrainConfig
from .methods.registry import METHODS, Method, get_method, option_types

__all__ = ["train_command", "eval_command", "synth_command"]


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


def _run(job):
    from ssprompt.runtime.files import terminate_like_interrupt

    terminate_like_interrupt()
    with reported_errors():
        return job()


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
            f"held-out mIoU: {summary['starts_from']} "
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


def _click_option(method: Method, field: Field, kind: type) -> click.Option:
    """The ssp-train option of one field of a method's options dataclass: its type, default and help."""
    flag, meta = method.option_flag(field.name), field.metadata
    text = f"{meta.get('help', '')} [--method {method.name}]"
    if kind is bool:  # False: a flag that switches it on; True: --NAME/--no-NAME
        declaration = flag if field.default is False else f"{flag}/--no-{flag[2:]}"
        return click.Option([declaration], is_flag=True, default=field.default, show_default=field.default is True, help=text)
    if meta.get("choices"):
        value_type = click.Choice(meta["choices"])
    elif kind is int:
        value_type = click.IntRange(min=meta.get("min"), max=meta.get("max"))
    elif kind is float:
        value_type = FiniteFloat(min=meta.get("min"), max=meta.get("max"))
    else:
        value_type = click.STRING
    return click.Option([flag], type=value_type, default=field.default, show_default=field.default is not None, help=text)


@functools.lru_cache(maxsize=1)
def _method_params(methods: tuple[Method, ...]) -> list[click.Option]:
    """--method and every method's own options, in registration order."""
    described = ", ".join(f"{m.name} ({m.description})" for m in methods)
    params = [click.Option(["--method"], type=click.Choice([m.name for m in methods]), default=ModelConfig.method,
                           show_default=True, help=f"What learns: {described}; every method trains and is evaluated the same way.")]
    for method in methods:
        types = option_types(method.options)
        params += [_click_option(method, f, types[f.name][0]) for f in fields(method.options)]
    return params


def _option_names(method: Method) -> dict[str, str]:
    """Field of the method's options dataclass -> the name click gives its ssp-train option."""
    return {f.name: method.option_flag(f.name)[2:].replace("-", "_") for f in fields(method.options)}


class MethodOptionsCommand(click.Command):
    """A command whose options include --method and each registered method's own options, brought up to
    date whenever they are asked for: a method registered after this module was imported gets its options too."""

    @property
    def params(self) -> list[click.Parameter]:
        generated = _method_params(tuple(METHODS.values()))
        if generated is not self._generated:  # the one list object, kept: click appends to it and pops from it
            own = [p for p in self._params if p not in self._generated]
            taken = {p.name for p in own}.intersection(p.name for p in generated)
            if taken:  # a method's option named as one of ssp-train's own (the registry keeps methods' apart)
                raise ValueError(f"a method's option clashes with ssp-train's --{sorted(taken)[0].replace('_', '-')}")
            at = next(i for i, p in enumerate(own) if p.name == "num_prompts") + 1
            self._params[:] = [*own[:at], *generated, *own[at:]]
            self._generated = generated
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params, self._generated = list(value), []


def _method_options(method: Method, opts: dict) -> dict:
    """The chosen method's options from ssp-train's values, as a dict; an option of another method given is an error."""
    ctx = click.get_current_context()
    for other in METHODS.values():
        for field_name, name in _option_names(other).items():
            given = ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
            if given and other is not method:
                raise click.ClickException(f"{other.option_flag(field_name)} is an option of --method {other.name}; "
                                           f"--method {method.name} does not take it")
    try:
        return asdict(method.parse_options({f: opts[name] for f, name in _option_names(method).items()}))
    except (TypeError, ValueError) as err:
        raise click.ClickException(str(err)) from None


@click.command(cls=MethodOptionsCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Dataset folder (classes.txt + images/labels).")
@click.option("--split", default=None, help="Split folder to draw the shots from (e.g. train).")
@click.option("--val-split", default=None, help="Held-out split: mIoU before and after training.")
@click.option("--void", default=TrainConfig.void, show_default=True, type=LABEL_VALUE,
              help="Label value ignored in loss and metrics (at least the number of classes).")
@_backbone_options
@click.option("--shots", default=TrainConfig.shots, show_default=True, type=POSITIVE, help="k labelled images per class.")
@click.option("--prompts", "num_prompts", default=ModelConfig.num_prompts, show_default=True, type=Parsed(_square, "square"),
              help="Spatial prompts N (a square: sqrt(N) x sqrt(N) point grid).")
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
@click.option("--weights-plot", type=OutputFile(), help="Also draw what the method learned (PNG; SSPrompt: its fusion weights).")
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
    method = get_method(opts["method"])
    method_options = _method_options(method, opts)

    def job():
        from ssprompt.runtime.files import exclusive

        model_config = ModelConfig(
            sam=opts["sam"], sam_checkpoint=opts["sam_checkpoint"], clip=opts["clip_name"],
            clip_pretrained=opts["clip_pretrained"], random_weights=opts["random_weights"], method=method.name,
            method_options=method_options, num_prompts=opts["num_prompts"],
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
