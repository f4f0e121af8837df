"""ssp-run --ray: ssp-run's outputs computed by a Ray Data pipeline, on this machine or a Ray cluster
(pip install 'ssprompt[serve]').

    paths --read: decode + letterbox (tasks)--> squares --runner actors (autoscaling pool)--> graph outputs
          --write: post-process, encode, write atomically (tasks)--> files; the driver writes the summary

Every image's files come from the encoder ssp-run uses (outputs.py), so the folder equals ssp-run's
(summary.json's seconds aside). Each image is finished by a record of it under
out/.ssprompt-ray/<settings>/, written after its files: a rerun with the same model, task and
options skips the images whose record exists and whose files are all there, and Ray retries the
tasks and actors a dead worker held, so a run ends with every image written. The model, the inputs
and the output folder must be at the same paths on every node of a cluster (a shared filesystem).

Resources: Ray's default of one CPU for each actor and task can give a small machine's CPUs all to
runner actors, starving the read tasks that feed them (a pool of two actors hangs on two CPUs).
Read and write tasks take `task_cpus` (a quarter CPU) each; the actors share what is left, at most
`actor_cpus` (4) each, so on 2 CPUs one actor of 1.5 CPUs runs beside the reads and writes, and a
64-CPU box gets a pool of up to 15 actors of 4 CPUs. With GPUs, each actor takes one.

Shapes: B images a batch, S the square input's side.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import OptionError
from .outputs import TaskSettings

__all__ = ["ClusterConfig", "Resources", "plan_resources", "segment_files_ray", "RECORDS"]

RECORDS = ".ssprompt-ray"  # hidden: never an input, never listed in summary.json


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None = None  # None: start Ray here; else a running cluster ("auto", "ray://host:10001")
    actors: tuple[int, int] | None = None  # the runner pool's (min, max) size; None: sized from the cluster
    actor_cpus: float | None = None  # CPUs each runner actor reserves; None: see plan_resources
    actor_gpus: float | None = None  # GPUs each runner actor reserves; None: 1 where the cluster has GPUs
    task_cpus: float = 0.25  # CPUs each read and write task reserves


@dataclass(frozen=True)
class Resources:
    actors: tuple[int, int]  # (min, max) runner actors
    actor_cpus: float
    actor_gpus: float
    task_cpus: float
    threads: int | None  # ONNX Runtime threads an actor (None: its default, every core)


def plan_resources(cpus: float, gpus: float, config: ClusterConfig = ClusterConfig()) -> Resources:
    """How the pipeline asks for `cpus` free CPUs and `gpus` free GPUs: see the module's docstring."""
    task_cpus = config.task_cpus
    reserve = 2 * task_cpus  # one read and one write task always find room
    actor_gpus = config.actor_gpus if config.actor_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if config.actor_cpus is not None:
        actor_cpus = config.actor_cpus
    elif actor_gpus > 0:
        actor_cpus = 1.0
    else:
        actor_cpus = min(4.0, max(task_cpus, cpus - reserve))
    most = max(1, math.floor((cpus - reserve) / actor_cpus)) if actor_cpus > 0 else 1
    if actor_gpus > 0:
        most = max(1, min(most, math.floor(gpus / actor_gpus)))
    actors = config.actors or (1, most)
    if actors[0] < 1 or actors[1] < actors[0]:
        raise OptionError(f"--actors {actors[0]},{actors[1]}: expected MIN,MAX with 1 <= MIN <= MAX")
    # Several actors of one node would each start a pool of every core's threads.
    threads = None if actors[1] == 1 and actor_gpus == 0 else max(1, math.ceil(actor_cpus))
    return Resources(actors, actor_cpus, actor_gpus, task_cpus, threads)


def _settings_key(model: Path, meta, settings: TaskSettings) -> str:
    """What makes a finished image's files reusable: the model file and every option that shapes them."""
    stat = model.stat()
    text = json.dumps([str(model.resolve()), stat.st_size, stat.st_mtime_ns, meta.pack_sha256, meta.precision,
                       asdict(settings)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _source(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _finished(records: Path, out: Path, item: dict) -> dict | None:
    """The record of an image an earlier run finished with the same settings, its files all there; else None."""
    try:
        done = json.loads((records / f"{item['stem']}.json").read_text())
    except (OSError, ValueError):
        return None
    record = done.get("record", {})
    files = [record[key] for key in ("label", "overlay", "panoptic") if record.get(key)]
    if done.get("source") != item["source"] or record.get("image_id") != item["image_id"] \
            or not all((out / name).is_file() for name in files):
        return None
    return done


# ------------------------------------------------------------------------------ the pipeline's stages


def _prepare(batch: dict[str, np.ndarray], size: int, pad_value: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Read task: each row's image decoded and letterboxed; an unreadable one keeps its error and a blank square."""
    from .images import ImageError, read_image
    from .preprocess import letterbox

    squares = np.zeros((len(batch["path"]), size, size, 3), np.uint8)  # (B, S, S, 3)
    placements = np.zeros((len(batch["path"]), 4), np.int64)  # height, width, source height, source width
    errors = []
    for i, path in enumerate(batch["path"]):
        try:
            squares[i], placement = letterbox(read_image(str(path)), size, pad_value)
            placements[i] = (placement.height, placement.width, placement.source_height, placement.source_width)
            errors.append("")
        except ImageError as err:
            errors.append(str(err))
    return {**batch, "square": squares, "placement": placements, "error": np.array(errors, dtype=object)}


class _Runner:
    """Runner actor: the graph on each batch of squares; returns the outputs the task reads, row by row."""

    def __init__(self, model: str, backend: str, provider: str, task: str, threads: int | None) -> None:
        from .ort_runner import OnnxRuntimeRunner
        from .runner import open_runner
        from .segmenter import Segmenter

        self.runner = open_runner(model, backend, provider)
        if isinstance(self.runner, OnnxRuntimeRunner):
            self.runner.threads = threads
        self.runner.activate()
        self.segmenter = Segmenter(self.runner)
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .tasks import TASKS

        good = np.flatnonzero(batch["error"] == "")
        began = time.perf_counter()
        outputs = self.segmenter.infer(batch["square"][good], [self.task]) if len(good) else {}
        seconds = (time.perf_counter() - began) / max(1, len(good))
        rows = len(batch["error"])
        result = {key: value for key, value in batch.items() if key != "square"}
        for name in TASKS[self.task].outputs:
            spec = next(o for o in self.runner.outputs if o.name == name)
            shape = outputs[name].shape[1:] if len(good) else tuple(d if isinstance(d, int) and d > 0 else 1
                                                                     for d in spec.shape[1:])
            column = np.zeros((rows, *shape), dtype=outputs[name].dtype if len(good) else spec.dtype)
            if len(good):
                column[good] = outputs[name]
            result["out_" + name] = column
        result["seconds"] = np.full(rows, seconds)
        result["device"] = np.array([f"{self.runner.backend}\t{self.runner.device}"] * rows, dtype=object)
        result["pid"] = np.full(rows, os.getpid())
        return result


def _write(batch: dict[str, np.ndarray], out: str, records: str, meta, settings: TaskSettings) -> dict[str, np.ndarray]:
    """Write task: each image post-processed and encoded as ssp-run does, its files written atomically, then
    its record (the mark of a finished image); returns the record for the summary."""
    from .files import write_bytes_atomic, write_text_atomic
    from .images import read_image
    from .outputs import encode_image
    from .preprocess import Letterbox
    from .tasks import TASKS

    out, records = Path(out), Path(records)
    done = []
    for i in range(len(batch["path"])):
        if batch["error"][i]:
            done.append("")
            continue
        height, width, source_height, source_width = (int(v) for v in batch["placement"][i])
        placement = Letterbox(meta.input_size, height, width, source_height, source_width)
        outputs = {key[len("out_"):]: batch[key][i] for key in batch if key.startswith("out_")}
        result = TASKS[settings.task].result(outputs, placement, meta.thing_classes, settings.instance_options,
                                             settings.panoptic_options)
        image = read_image(str(batch["path"][i])) if settings.with_overlay else None
        encoded = encode_image(meta, settings, result, str(batch["path"][i]), str(batch["stem"][i]),
                               int(batch["image_id"][i]), (source_height, source_width), image)
        for name, data in encoded.files.items():
            write_bytes_atomic(out / name, data)
        finished = {"source": json.loads(str(batch["source"][i])), "device": str(batch["device"][i]),
                    "record": {**encoded.record, "seconds": float(batch["seconds"][i])}, "coco": encoded.coco}
        text = json.dumps(finished)
        write_text_atomic(records / f"{batch['stem'][i]}.json", text)
        done.append(text)
    return {"image_id": batch["image_id"], "path": batch["path"], "error": batch["error"],
            "pid": batch["pid"], "done": np.array(done, dtype=object)}


# ------------------------------------------------------------------------------ the driver


def segment_files_ray(model: str | Path, inputs: list[str | Path], out: str | Path, batch: int, settings: TaskSettings,
                      skip_bad: bool, backend: str, provider: str, progress: bool, log, cluster: ClusterConfig,
                      on_row=None) -> dict:
    """`segment_files`'s job and summary, through Ray Data (see the module's docstring).

    Joins the Ray instance already initialised in this process, else starts one (or joins
    `cluster.address`) and shuts it down at the end. `on_row(row)` sees each written image's
    row as it comes back (image_id, path, error, the pid of the actor that ran it).

    Raises:
      ImageError: no input image, an unreadable one with `skip_bad` off, or none segmented.
    """
    import ray

    from .runner import open_runner
    from .images import ImageError, find_images
    from .run import finish_output, prepare_output, unique_names
    from .segmenter import Segmenter

    task = settings.task
    paths = find_images(list(inputs))
    out = Path(out)
    with open_runner(model, backend, provider) as runner:  # checks the model and the task here, in one line
        segmenter = Segmenter(runner)
        segmenter.check_task(task)
        meta = runner.metadata
    earlier = prepare_output(out)
    records = out / RECORDS / _settings_key(Path(model), meta, settings)
    if (out / RECORDS).is_dir():  # another settings' records can no longer be reused
        for other in (out / RECORDS).iterdir():
            if other != records:
                shutil.rmtree(other, ignore_errors=True)
    records.mkdir(parents=True, exist_ok=True)
    from .files import remove_stale_temporaries

    remove_stale_temporaries(records)
    items = [{"path": str(path), "stem": stem, "image_id": i + 1, "source": _source(path)}
             for i, (path, stem) in enumerate(zip(paths, unique_names(paths)))]
    finished = {item["image_id"]: done for item in items if (done := _finished(records, out, item))}
    todo = [{**item, "source": json.dumps(item["source"])} for item in items if item["image_id"] not in finished]
    if finished:
        log(f"{len(finished)} of {len(items)} images already done in {out}; segmenting the other {len(todo)}")

    started = not ray.is_initialized()
    if started:
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    skipped: list[dict] = []
    try:
        # What is free, not the cluster's total: a Serve replica or another job may hold part of it.
        free = ray.available_resources()
        plan = plan_resources(free.get("CPU", 0.0), free.get("GPU", 0.0), cluster)
        if todo:
            began = time.perf_counter()
            for row in _pipeline(todo, model, backend, provider, meta, settings, out, records, batch, plan, progress):
                if row["error"]:
                    if not skip_bad:
                        raise ImageError(row["error"])
                    skipped.append({"file": row["path"], "error": row["error"]})
                    log(f"skipped {row['error']}")
                else:
                    finished[int(row["image_id"])] = json.loads(row["done"])
                if on_row is not None:
                    on_row(row)
            log(f"Ray Data pipeline: {len(todo)} images in {time.perf_counter() - began:.1f} s, runner actors "
                f"{plan.actors[0]} to {plan.actors[1]} of {plan.actor_cpus:g} CPUs and {plan.actor_gpus:g} GPUs")
    finally:
        if started:
            ray.shutdown()
    ordered = [finished[i] for i in sorted(finished)]
    skipped.sort(key=lambda entry: [item["path"] for item in items].index(entry["file"]))
    backend_name, device = (ordered[0]["device"].split("\t", 1) if ordered else (runner.backend, runner.device))
    written = {out / done["record"][key] for done in ordered for key in ("label", "overlay", "panoptic")
               if done["record"].get(key)}
    coco = [entry for done in ordered for entry in done["coco"]]
    return finish_output(out, model, backend_name, device, meta, task, [done["record"] for done in ordered], skipped,
                         coco, earlier, written, len(paths), log)


def _pipeline(todo: list[dict], model, backend: str, provider: str, meta, settings: TaskSettings, out: Path,
              records: Path, batch: int, plan: Resources, progress: bool):
    """The Ray Data pipeline over the images still to do; yields one row a finished (or unreadable) image."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    blocks = max(1, min(len(todo), math.ceil(len(todo) / batch)))
    dataset = ray.data.from_items(todo, override_num_blocks=min(blocks, 200))
    dataset = dataset.map_batches(_prepare, fn_kwargs={"size": meta.input_size, "pad_value": tuple(meta.pad_value)},
                                  batch_size=batch, batch_format="numpy", num_cpus=plan.task_cpus,
                                  compute=ray.data.TaskPoolStrategy())
    dataset = dataset.map_batches(_Runner, fn_constructor_args=(str(model), backend, provider, settings.task, plan.threads),
                                  batch_size=batch, batch_format="numpy", num_cpus=plan.actor_cpus,
                                  num_gpus=plan.actor_gpus or None,
                                  compute=ray.data.ActorPoolStrategy(min_size=plan.actors[0], max_size=plan.actors[1]))
    dataset = dataset.map_batches(_write, fn_kwargs={"out": str(out), "records": str(records), "meta": meta,
                                                     "settings": settings},
                                  batch_size=batch, batch_format="numpy", num_cpus=plan.task_cpus,
                                  compute=ray.data.TaskPoolStrategy())
    yield from dataset.iter_rows()
