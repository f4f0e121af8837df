"""Command lines: ssp-run and ssp-bench (numpy + TensorRT / ONNX Runtime; no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .runner import BACKENDS
from .contract import LABELS
from .instances import InstanceOptions, PanopticOptions
from .options import NON_NEGATIVE, POSITIVE, UNIT, FiniteFloat, IntList, OutputFile, reported_errors
from .tasks import TASKS

__all__ = ["run_command", "bench_command", "serve_command", "postprocess_options", "options_from"]

_backend = click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True,
                        help="auto: TensorRT for .plan/.engine, ONNX Runtime for .onnx.")
_cuda_graph = click.option("--cuda-graph/--no-cuda-graph", default=False, show_default=True,
                           help="On ONNX Runtime's CUDA provider: one session per batch size, each call replayed as a "
                                "captured CUDA graph (faster at batch 1, more memory at large batches).")
_provider = click.option("--provider", type=click.Choice(["auto", "tensorrt", "cuda", "cpu"]), default="auto", show_default=True,
                         help="ONNX Runtime execution provider (auto: best available; falls back and says which ran).")


_POSTPROCESS_OPTIONS = (
    click.option("--mask-threshold", default=InstanceOptions.mask_threshold, show_default=True, type=FiniteFloat(),
                 help="instance, panoptic: mask logit above which a pixel is in (SAM's)."),
    click.option("--score-threshold", default=InstanceOptions.score_threshold, show_default=True, type=UNIT,
                 help="instance: drop instances scoring at or below (class probability x IoU estimate)."),
    click.option("--nms-iou", default=InstanceOptions.nms_iou, show_default=True, type=UNIT,
                 help="instance: mask IoU above which the lower-scoring of two instances goes (SAM's AMG)."),
    click.option("--top-k", default=InstanceOptions.top_k, show_default=True, type=POSITIVE,
                 help="instance: instances kept an image."),
    click.option("--object-threshold", default=PanopticOptions.object_threshold, show_default=True, type=UNIT,
                 help="panoptic: prompts scoring at or below claim no pixels (Mask2Former's)."),
    click.option("--overlap-threshold", default=PanopticOptions.overlap_threshold, show_default=True, type=UNIT,
                 help="panoptic: share of its own mask a prompt must win to keep its segment (Mask2Former's)."),
)


def postprocess_options(fn):
    """The instance and panoptic post-processing options (ssp-run, ssp-eval); `options_from` reads them."""
    for option in reversed(_POSTPROCESS_OPTIONS):
        fn = option(fn)
    return fn


def options_from(opts: dict) -> tuple[InstanceOptions, PanopticOptions]:
    """Pops the post-processing options from a command's keyword arguments (ValueError when out of range)."""
    instance = InstanceOptions(**{k: opts.pop(k) for k in ("mask_threshold", "score_threshold", "nms_iou", "top_k")})
    panoptic = PanopticOptions(**{k: opts.pop(k) for k in ("object_threshold", "overlap_threshold")},
                               mask_threshold=instance.mask_threshold)
    return instance, panoptic


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=OutputFile(folder=True), help="Output folder.")
@click.option("--batch", default=1, show_default=True, type=POSITIVE, help="Images per engine call.")
@click.option("--overlay", "with_overlay", is_flag=True, help="Also write colour overlays.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="A bad image: report and skip it, or stop the run.")
@click.option("--task", type=click.Choice(list(TASKS)), default="semantic", show_default=True,
              help="; ".join(f"{task.name}: {task.help}" for task in TASKS.values()) + ".")
@postprocess_options
@_backend
@_provider
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run as a Ray Data pipeline (pip install 'ssprompt[serve]'): on a Ray started here, or on the cluster "
                   "at ADDRESS (auto, ray://host:10001). Same outputs; a rerun skips the images already done.")
@click.option("--actors", default=None, metavar="MIN,MAX", help="--ray: the runner actor pool's size  [default: 1 up to "
              "what the CPUs (or GPUs) hold]")
@click.option("--actor-cpus", default=None, type=FiniteFloat(min=0), help="--ray: CPUs each runner actor reserves.")
@click.option("--actor-gpus", default=None, type=FiniteFloat(min=0),
              help="--ray: GPUs each runner actor reserves  [default: 1 where the cluster has GPUs, else 0]")
@click.option("--quiet", is_flag=True)
def run_command(model, inputs, out, batch, with_overlay, on_error, task, backend, provider, ray_address, actors,
                actor_cpus, actor_gpus, quiet, **postprocess) -> None:
    """Segment images (files or folders) with an exported model: label PNGs, COCO instances or COCO panoptic,
    overlays, summary.json."""
    from .files import terminate_like_interrupt
    from .run import segment_files

    terminate_like_interrupt()
    if ray_address is None and (actors or actor_cpus is not None or actor_gpus is not None):
        raise click.UsageError("--actors, --actor-cpus and --actor-gpus go with --ray")
    try:
        pool = tuple(int(n) for n in actors.split(",")) if actors else None
        if pool is not None and len(pool) != 2:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{actors!r}: expected MIN,MAX such as 1,4", param_hint="--actors") from None

    with reported_errors():
        instance_options, panoptic_options = options_from(postprocess)
        arguments = dict(progress=not quiet, log=click.echo, task=task, instance_options=instance_options,
                         panoptic_options=panoptic_options)
        cluster = None
        if ray_address is not None:
            try:
                import ray.data  # noqa: F401

                from .cluster import ClusterConfig
            except ImportError:
                raise click.ClickException("--ray needs Ray Data: pip install 'ssprompt[serve]'") from None
            cluster = ClusterConfig(None if ray_address == "local" else ray_address, pool, actor_cpus, actor_gpus)
        summary = segment_files(model, list(inputs), out, batch, with_overlay, on_error == "skip", backend, provider,
                                cluster=cluster, **arguments)
    click.echo(f"{len(summary['images'])} images segmented on {summary['backend']} ({summary['device']}), "
               f"{len(summary['skipped'])} skipped; {Path(out) / 'summary.json'}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--batch", "batches", default="1,2,4,8", show_default=True, type=IntList(POSITIVE),
              help="Batch sizes, comma-separated.")
@click.option("--warmup", default=3, show_default=True, type=NON_NEGATIVE)
@click.option("--iters", default=20, show_default=True, type=POSITIVE)
@_backend
@_provider
@_cuda_graph
@click.option("--outputs", default=LABELS, show_default=True,
              help="Outputs copied back to the host each call, comma-separated, or 'all' (ssp-run needs labels).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--markdown", type=OutputFile(), help="Write the table to this markdown file.")
@click.option("--plot", type=OutputFile(), help="Write a latency/throughput plot (PNG; needs matplotlib).")
@click.option("--quiet", is_flag=True)
def bench_command(model, batches, warmup, iters, backend, provider, cuda_graph, outputs, as_json, markdown, plot, quiet) -> None:
    """Latency p50/p90/p99, images/s, host and GPU peak memory of an exported model, by batch size."""
    from .bench import benchmark
    from .files import terminate_like_interrupt, write_text_atomic
    from .report import environment, markdown_table, plot_latency, rows_as_dicts
    from .runner import open_runner

    terminate_like_interrupt()

    sizes = batches
    command = (f"ssp-bench {model} --batch {','.join(map(str, sizes))} --warmup {warmup} --iters {iters} --backend {backend} "
               f"--provider {provider} --{'' if cuda_graph else 'no-'}cuda-graph --outputs {outputs}")
    wanted = None if outputs == "all" else tuple(outputs.split(","))

    def open_batch(batch: int):
        return open_runner(model, backend, provider, batch=batch, cuda_graph=cuda_graph)

    with reported_errors():
        rows, runner = benchmark(open_batch, sizes, warmup, iters, outputs=wanted, progress=not (quiet or as_json),
                                 log=lambda note: click.echo(note, err=True))
        info = environment(runner)
        table = markdown_table(rows, info, command)
        if markdown:
            write_text_atomic(markdown, table)
        if plot:
            plot_latency(rows, info, plot)
    click.echo(json.dumps({"environment": info, "rows": rows_as_dicts(rows)}) if as_json else table)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--replicas", default=1, show_default=True, type=POSITIVE, help="Copies of the model serving.")
@click.option("--max-batch", default=8, show_default=True, type=POSITIVE,
              help="Most requests one graph call takes (Ray Serve's batching).")
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=FiniteFloat(min=0),
              help="How long a batch waits for more requests before it runs.")
@click.option("--cpus-per-replica", default=1.0, show_default=True, type=FiniteFloat(min=0),
              help="CPUs Ray reserves for each replica.")
@click.option("--gpus-per-replica", default=None, type=FiniteFloat(min=0),
              help="GPUs Ray reserves for each replica  [default: 1 where the cluster has GPUs, else 0]")
@click.option("--max-bytes", default=64 * 2**20, show_default=True, type=POSITIVE,
              help="Largest upload taken; larger ones get 413.")
@click.option("--address", default=None,
              help="A running Ray cluster to serve from (ray://host:10001, or auto); default: start one here.")
@postprocess_options
@_backend
@_provider
def serve_command(model, host, port, replicas, max_batch, batch_wait_ms, cpus_per_replica, gpus_per_replica, max_bytes,
                  address, backend, provider, **postprocess) -> None:
    """Serve an exported model over HTTP with Ray Serve: POST /segment?task=semantic|instance|panoptic with an image
    (answers what ssp-run writes for it), GET /metadata, GET /healthz. Needs pip install 'ssprompt[serve]'."""
    from .files import terminate_like_interrupt

    terminate_like_interrupt()
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise click.ClickException("ssp-serve needs Ray Serve: pip install 'ssprompt[serve]'") from None
    from .runner import open_runner
    from .segmenter import Segmenter
    from .serve import ServeConfig, run_server

    with reported_errors():
        instance_options, panoptic_options = options_from(postprocess)
        with open_runner(model, backend, provider) as runner:  # a bad model fails here, in one line, not in a replica
            Segmenter(runner)
        config = ServeConfig(str(Path(model).resolve()), backend, provider, max_batch, batch_wait_ms, replicas,
                             cpus_per_replica, gpus_per_replica, max_bytes,
                             instance_options, panoptic_options)
    run_server(config, host, port, address, log=click.echo)
