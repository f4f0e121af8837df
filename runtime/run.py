"""The job behind ssp-run: segment files, write label PNGs (semantic), COCO results (instance) or COCO panoptic
PNGs and JSON (panoptic), overlays and a JSON summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .backends import open_runner
from .files import atomic_path, remove_stale_temporaries, write_text_atomic
from .images import ImageError, find_images, read_image
from .coco import categories, instance_overlay, instance_records, panoptic_overlay, panoptic_png, panoptic_record
from .instances import InstanceOptions, PanopticOptions
from .postprocess import overlay
from .segmenter import Segmenter

# Each task's one file for all images, beside summary.json.
_TASK_JSON = {"semantic": None, "instance": "instances.json", "panoptic": "panoptic.json"}

__all__ = ["segment_files", "unique_names", "write_png"]


def write_png(array: np.ndarray, path: Path) -> None:
    """Write an image atomically: a temporary file beside `path`, then rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _label_image(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)


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
) -> dict:
    """Segment every image under `inputs`; returns (and writes as out/summary.json) a summary.

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
    paths = find_images(list(inputs))
    out = Path(out)
    records, skipped = [], []
    written: set[Path] = set()
    with open_runner(model, backend, provider) as runner:
        for note in runner.notes:
            log(note)
        segmenter = Segmenter(runner)
        segmenter.check_task(task)
        earlier = _previous_outputs(out)
        for folder in (out, out / "labels", out / "overlays", out / "panoptic"):
            remove_stale_temporaries(folder)
        names = unique_names(paths)
        image_ids = {path: i + 1 for i, path in enumerate(paths)}
        coco_instances, coco_panoptic = [], []
        segment = {"semantic": segmenter.segment,
                   "instance": lambda chunk_images: segmenter.instances(chunk_images, instance_options),
                   "panoptic": lambda chunk_images: segmenter.panoptic(chunk_images, panoptic_options)}[task]
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
                results = segment(images)
                seconds = (time.perf_counter() - began) / len(images)
                for (path, stem), image, result in zip(kept, images, results):
                    record = {"file": str(path), "image_id": image_ids[path], "height": int(image.shape[0]),
                              "width": int(image.shape[1])}
                    if task == "semantic":
                        record["label"] = f"labels/{stem}.png"
                        write_png(_label_image(result, len(segmenter.class_names)), out / record["label"])
                        picture = overlay(image, result, segmenter.palette, unpainted=segmenter.unpainted) if with_overlay else None
                        record["classes"] = [segmenter.class_names[c] for c in np.unique(result)
                                             if c < len(segmenter.class_names)]
                    elif task == "instance":
                        coco_instances += instance_records(record["image_id"], result)
                        record["instances"] = len(result.masks)
                        picture = instance_overlay(image, result) if with_overlay else None
                    else:
                        record["panoptic"] = f"panoptic/{stem}.png"
                        write_png(panoptic_png(result.ids), out / record["panoptic"])
                        coco_panoptic.append(panoptic_record(record["image_id"], f"{stem}.png", result))
                        record["segments"] = len(result.segments)
                        picture = panoptic_overlay(image, result, segmenter.palette, unpainted=segmenter.unpainted) if with_overlay else None
                    if picture is not None:
                        record["overlay"] = f"overlays/{stem}.png"
                        write_png(picture, out / record["overlay"])
                    written |= {out / record[key] for key in ("label", "overlay", "panoptic") if key in record}
                    records.append({**record, "seconds": seconds})
            bar.update(len(chunk))
        bar.close()
        listing = categories(segmenter.class_names, segmenter.thing_classes, segmenter.palette)
        summary = {"model": str(model), "backend": runner.backend, "device": runner.device,
                   "precision": segmenter.runner.metadata.precision, "task": task, "categories": listing,
                   "files": [_TASK_JSON[task]] if _TASK_JSON[task] else [], "images": records, "skipped": skipped}
    if not records:
        raise ImageError(f"none of the {len(paths)} input images could be segmented ({len(skipped)} unreadable); nothing written")
    if task == "instance":
        write_text_atomic(out / _TASK_JSON[task], json.dumps(coco_instances))
    elif task == "panoptic":
        write_text_atomic(out / _TASK_JSON[task], json.dumps({"annotations": coco_panoptic, "categories": listing}))
    written |= {out / name for name in summary["files"]}
    stale = sorted(earlier - written)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} files of the previous run in {out} that this run did not write")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
