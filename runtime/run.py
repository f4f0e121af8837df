"""The job behind ssp-run: segment files, write label PNGs (semantic), COCO results (instance) or COCO panoptic
PNGs and JSON (panoptic), overlays and a JSON summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from .backends import open_runner
from .coco import categories
from .contract import GraphMetadata
from .files import remove_stale_temporaries, write_bytes_atomic, write_text_atomic
from .images import ImageError, find_images, read_image
from .instances import InstanceOptions, PanopticOptions
from .outputs import TASK_JSON, TaskSettings, encode_image, task_json
from .segmenter import Segmenter

__all__ = ["segment_files", "unique_names", "prepare_output", "finish_output", "comparable_outputs"]


def unique_names(paths: list[Path]) -> list[str]:
    """One output stem per input, all distinct: an input keeps its own stem where it can (first come,
    first served), and a clash takes the stem with the first free suffix _1, _2, ...

    A/a.png, B/a.png, C/a_1.png -> a, a_2, a_1: no suffix ever lands on another input's own stem.
    """
    taken: set[str] = set()  # casefolded: names that differ by case alone collide on some filesystems
    names: list[str | None] = []
    for path in paths:
        if path.stem.casefold() in taken:
            names.append(None)
        else:
            taken.add(path.stem.casefold())
            names.append(path.stem)
    for i, path in enumerate(paths):
        if names[i] is None:
            count = 1
            while f"{path.stem}_{count}".casefold() in taken:
                count += 1
            names[i] = f"{path.stem}_{count}"
            taken.add(names[i].casefold())
    return names


def _previous_outputs(out: Path) -> set[Path]:
    """The files an earlier run listed in out/summary.json (nothing if it is unreadable)."""
    try:
        earlier = json.loads((out / "summary.json").read_text())
        files = {out / record[key] for record in earlier["images"] for key in ("label", "overlay", "panoptic")
                 if record.get(key)}
        files |= {out / name for name in earlier.get("files", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {f for f in files if f.resolve().is_relative_to(out.resolve())}


def segment_files(
    model: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    batch: int = 1,
    with_overlay: bool = False,
    skip_bad: bool = True,
    backend: str = "auto",
    provider: str = "auto",
    progress: bool = True,
    log=print,
    task: str = "semantic",
    instance_options: InstanceOptions = InstanceOptions(),
    panoptic_options: PanopticOptions = PanopticOptions(),
    cluster=None,
    on_row=None,
) -> dict:
    """Segment every image under `inputs`; returns (and writes as out/summary.json) a summary.

    With `cluster` (a cluster.ClusterConfig), the same job and the same files through a Ray Data
    pipeline (cluster.py; `on_row` sees each image's row as it comes back).

    Tasks: semantic writes labels/<stem>.png (a class index a pixel); instance writes instances.json
    (COCO results, RLE masks); panoptic writes panoptic/<stem>.png and panoptic.json (COCO panoptic).
    Image ids are 1, 2, ... in input order, recorded in the summary beside each file.

    A bad image is reported by name and skipped (`skip_bad`) or stops the run; files already
    written stay complete, since each is written to a temporary name and renamed. Folders are
    made on the first write, after the model has loaded. Rerun into the same `out`, the files of
    the earlier run that this one does not rewrite are removed (and said so), so the folder and
    its summary.json agree.

    Raises:
      ImageError: no input image, an unreadable one with `skip_bad` off, or none segmented.
    """
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    settings = TaskSettings(task, with_overlay, instance_options, panoptic_options)
    if cluster is not None:
        from .cluster import segment_files_ray

        return segment_files_ray(model, inputs, out, batch, settings, skip_bad, backend, provider, progress, log,
                                 cluster, on_row)
    paths = find_images(list(inputs))
    out = Path(out)
    records, skipped = [], []
    written: set[Path] = set()
    with open_runner(model, backend, provider) as runner:
        for note in runner.notes:
            log(note)
        segmenter = Segmenter(runner)
        segmenter.check_task(task)
        earlier = prepare_output(out)
        names = unique_names(paths)
        image_ids = {path: i + 1 for i, path in enumerate(paths)}
        coco: list[dict] = []
        bar = tqdm(total=len(paths), desc="segment", unit="img", disable=not progress)
        for start in range(0, len(paths), batch):
            chunk = list(zip(paths[start:start + batch], names[start:start + batch]))
            images, kept = [], []
            for path, stem in chunk:
                try:
                    images.append(read_image(path))
                    kept.append((path, stem))
                except ImageError as err:
                    if not skip_bad:
                        raise
                    skipped.append({"file": str(path), "error": str(err)})
                    log(f"skipped {err}")
            if images:
                began = time.perf_counter()
                results = segmenter.run(task, images, instance_options, panoptic_options)
                seconds = (time.perf_counter() - began) / len(images)
                for (path, stem), image, result in zip(kept, images, results):
                    encoded = encode_image(runner.metadata, settings, result, str(path), stem, image_ids[path], image.shape[:2],
                                           image)
                    for name, data in encoded.files.items():
                        write_bytes_atomic(out / name, data)
                    written |= {out / name for name in encoded.files}
                    coco += encoded.coco
                    records.append({**encoded.record, "seconds": seconds})
            bar.update(len(chunk))
        bar.close()
        backend_name, device = runner.backend, runner.device
    return finish_output(out, model, backend_name, device, runner.metadata, task, records, skipped, coco,
                         earlier, written, len(paths), log)


def prepare_output(out: Path) -> set[Path]:
    """Before a run writes into `out`: removes temporaries that dead writers left there; returns the files
    an earlier run listed in out/summary.json."""
    earlier = _previous_outputs(out)
    for folder in (out, out / "labels", out / "overlays", out / "panoptic"):
        remove_stale_temporaries(folder)
    return earlier


def finish_output(out: Path, model: str | Path, backend: str, device: str, meta: GraphMetadata, task: str,
                  records: list[dict], skipped: list[dict], coco: list[dict], earlier: set[Path], written: set[Path],
                  inputs: int, log=print) -> dict:
    """After every image's files are written: the task's JSON file, the earlier run's files this one did not
    write removed, then summary.json (last, so that a folder with a summary is a finished one); returns it.

    `records` and `coco` are in image-id order; `written` holds the image files this run wrote.

    Raises:
      ImageError: no image segmented (nothing is written then).
    """
    if not records:
        raise ImageError(f"none of the {inputs} input images could be segmented ({len(skipped)} unreadable); nothing written")
    listing = categories(meta.class_names, meta.thing_classes, meta.palette)
    summary = {"model": str(model), "backend": backend, "device": device, "precision": meta.precision, "task": task,
               "categories": listing, "files": [TASK_JSON[task]] if TASK_JSON[task] else [], "images": records,
               "skipped": skipped}
    if TASK_JSON[task]:
        write_text_atomic(out / TASK_JSON[task], task_json(task, coco, listing))
    written = written | {out / name for name in summary["files"]}
    stale = sorted(earlier - written)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} files of the previous run in {out} that this run did not write")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def comparable_outputs(out: str | Path) -> dict[str, bytes]:
    """Every file a run wrote into `out` (hidden ones aside) by its path there, summary.json without its
    timings: two runs of the same images, model and options give equal dicts."""
    out = Path(out)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}
    summary = json.loads(files.pop("summary.json"))
    for record in summary["images"]:
        record.pop("seconds")
    files["summary.json"] = json.dumps(summary).encode()
    return files
