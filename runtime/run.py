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
from .bench import peak_rss_mb, reset_peak_rss, rss_mb
from .files import NAME_MAX, atomic_path, cut_name, exclusive, remove_stale_temporaries, write_text_atomic
from .images import ImageError, find_images, read_image
from .coco import categories, instance_overlay, instance_records, panoptic_overlay, panoptic_png, panoptic_record
from .instances import InstanceOptions, PanopticOptions
from .postprocess import overlay
from .segmenter import Segmenter

# Each task's one file for all images, beside summary.json.
_TASK_JSON = {"semantic": None, "instance": "instances.json", "panoptic": "panoptic.json"}
# The folders of --out that hold one file an image; never read as input, even where --out is an input folder.
OUTPUT_FOLDERS = ("labels", "overlays", "panoptic")
# A stem leaves room for a clash's suffix (_12345) and .png within one path component.
_STEM_BYTES = NAME_MAX - len("_12345.png")
# One call may take at most this share of the memory available when the run starts.
CALL_MEMORY_SHARE = 0.5

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
    A stem is cut to fit one path component (255 bytes) with its suffix and .png.
    """
    stems = [cut_name(path.stem, _STEM_BYTES) for path in paths]
    taken: set[str] = set()  # casefolded: names that differ by case alone collide on some filesystems
    names: list[str | None] = []
    for stem in stems:
        if stem.casefold() in taken:
            names.append(None)
        else:
            taken.add(stem.casefold())
            names.append(stem)
    for i, stem in enumerate(stems):
        if names[i] is None:
            count = 1
            while f"{stem}_{count}".casefold() in taken:
                count += 1
            names[i] = f"{stem}_{count}"
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


def _available_mb() -> float | None:
    """Memory available to new allocations (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _probe_cost_mb(call) -> float | None:
    """Host memory one call takes at its peak above what was resident before it (Linux), None where unknown."""
    before = rss_mb()
    if before is None or not reset_peak_rss():
        call()
        return None
    call()
    return max(peak_rss_mb() - before, 1.0)


def affordable_batch(batch: int, per_image_mb: float | None, available_mb: float | None) -> int:
    """The largest batch not above `batch` whose call takes at most CALL_MEMORY_SHARE of `available_mb`, at
    `per_image_mb` an image (measured on a call of one image, so an upper bound); `batch` where either is unknown."""
    if per_image_mb is None or available_mb is None:
        return batch
    return max(1, min(batch, int(CALL_MEMORY_SHARE * available_mb / per_image_mb)))


def _write_outputs(out: Path, summary: dict, task_json, earlier: set[Path], written: set[Path], log) -> None:
    """The task's JSON, the earlier run's files this one did not rewrite removed, then summary.json: the
    folder and its summary agree, for a finished run and for one that stopped part-way."""
    name = _TASK_JSON[summary["task"]]
    if name:
        write_text_atomic(out / name, json.dumps(task_json))
        written.add(out / name)
    stale = sorted(earlier - written)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} files of the previous run in {out} that this run did not write")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))


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
    Image ids are 1, 2, ... in input order (an input named twice has two), recorded in the summary
    beside each file. `out`'s own folders (OUTPUT_FOLDERS) are never read as input.

    A bad image is reported by name and skipped (`skip_bad`) or stops the run; files already
    written stay complete, since each is written to a temporary name and renamed. Folders are
    made on the first write, after the model has loaded. Rerun into the same `out`, the files of
    the earlier run that this one does not rewrite are removed (and said so), so the folder and
    its summary.json agree; a run that stops part-way (an error, a full disk, Ctrl-C) after its
    first write still writes summary.json, with "complete": false and the reason. One run at a
    time writes `out` (`files.exclusive`). A call takes at most CALL_MEMORY_SHARE of the host
    memory available, measured on the first image (`affordable_batch`); a smaller batch is said.

    Raises:
      ImageError: no input image, an unreadable one with `skip_bad` off, or none segmented.
      LockedError: another run is writing `out`.
    """
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    out = Path(out)
    paths = find_images(list(inputs), exclude=[out / name for name in OUTPUT_FOLDERS])
    with exclusive(out, "output folder"), open_runner(model, backend, provider) as runner:
        for note in runner.notes:
            log(note)
        segmenter = Segmenter(runner)
        segmenter.check_task(task)
        earlier = _previous_outputs(out)
        state = _Run(out, task, segmenter, with_overlay, instance_options, panoptic_options)
        names = unique_names(paths)
        jobs = [(path, stem, i + 1) for i, (path, stem) in enumerate(zip(paths, names))]
        bar = tqdm(total=len(paths), desc="segment", unit="img", disable=not progress)
        summary = {"model": str(model), "backend": runner.backend, "device": runner.device,
                   "precision": runner.metadata.precision, "task": task,
                   "categories": categories(segmenter.class_names, segmenter.thing_classes, segmenter.palette),
                   "files": [_TASK_JSON[task]] if _TASK_JSON[task] else [], "images": state.records,
                   "skipped": state.skipped}
        try:
            for folder in (out, *(out / name for name in OUTPUT_FOLDERS)):
                remove_stale_temporaries(folder)
            batch = min(batch, len(jobs))
            start, probe = 0, batch > 1
            while start < len(jobs):
                chunk = jobs[start:start + (1 if probe else batch)]
                if probe:
                    cost = _probe_cost_mb(lambda: state.segment(chunk, skip_bad, log))
                    probe = not state.records  # an unreadable image ran nothing: measure on the next
                    affordable = batch if probe else affordable_batch(batch, cost, _available_mb())
                    if affordable < batch:
                        log(f"--batch {batch}: a call would take about {batch * cost / 1024:.1f} GB at {cost:.0f} MB an "
                            f"image, more than {CALL_MEMORY_SHARE:.0%} of the {_available_mb() / 1024:.1f} GB available; "
                            f"running {affordable} images a call")
                        batch = affordable
                else:
                    state.segment(chunk, skip_bad, log)
                start += len(chunk)
                bar.update(len(chunk))
            bar.close()
        except BaseException as err:
            bar.close()
            if state.written:  # files are on disk: the summary must say which, and that the run stopped
                summary.update(complete=False, error=" ".join(str(err).split()) or type(err).__name__)
                try:
                    _write_outputs(out, summary, state.task_json(), earlier, state.written, log)
                except OSError:
                    pass  # the disk that failed the run may fail this too; the original error says why
            raise
    if not state.records:
        raise ImageError(f"none of the {len(paths)} input images could be segmented ({len(state.skipped)} unreadable); nothing written")
    summary["complete"] = True
    _write_outputs(out, summary, state.task_json(), earlier, state.written, log)
    return summary


class _Run:
    """What one ssp-run has segmented and written so far."""

    def __init__(self, out: Path, task: str, segmenter: Segmenter, with_overlay: bool,
                 instance_options: InstanceOptions, panoptic_options: PanopticOptions) -> None:
        self.out, self.task, self.segmenter, self.with_overlay = out, task, segmenter, with_overlay
        self.records: list[dict] = []
        self.skipped: list[dict] = []
        self.written: set[Path] = set()
        self.coco_instances: list[dict] = []
        self.coco_panoptic: list[dict] = []
        self.run = {"semantic": segmenter.segment,
                    "instance": lambda images: segmenter.instances(images, instance_options),
                    "panoptic": lambda images: segmenter.panoptic(images, panoptic_options)}[task]

    def task_json(self):
        if self.task == "instance":
            return self.coco_instances
        return {"annotations": self.coco_panoptic, "categories": categories(
            self.segmenter.class_names, self.segmenter.thing_classes, self.segmenter.palette)}

    def segment(self, chunk: list[tuple[Path, str, int]], skip_bad: bool, log) -> None:
        """Read, segment and write one call's images: (path, output stem, image id) each."""
        segmenter, out = self.segmenter, self.out
        images, kept = [], []
        for job in chunk:
            try:
                images.append(read_image(job[0]))
                kept.append(job)
            except ImageError as err:
                if not skip_bad:
                    raise
                self.skipped.append({"file": str(job[0]), "error": str(err)})
                log(f"skipped {err}")
        if not images:
            return
        began = time.perf_counter()
        results = self.run(images)
        seconds = (time.perf_counter() - began) / len(images)
        for (path, stem, image_id), image, result in zip(kept, images, results):
            record = {"file": str(path), "image_id": image_id, "height": int(image.shape[0]), "width": int(image.shape[1])}
            if self.task == "semantic":
                record["label"] = f"labels/{stem}.png"
                write_png(_label_image(result, len(segmenter.class_names)), out / record["label"])
                picture = overlay(image, result, segmenter.palette, unpainted=segmenter.unpainted) if self.with_overlay else None
                record["classes"] = [segmenter.class_names[c] for c in np.unique(result)]
            elif self.task == "instance":
                self.coco_instances += instance_records(image_id, result)
                record["instances"] = len(result.masks)
                picture = instance_overlay(image, result) if self.with_overlay else None
            else:
                record["panoptic"] = f"panoptic/{stem}.png"
                write_png(panoptic_png(result.ids), out / record["panoptic"])
                self.coco_panoptic.append(panoptic_record(image_id, f"{stem}.png", result))
                record["segments"] = len(result.segments)
                picture = panoptic_overlay(image, result, segmenter.palette, unpainted=segmenter.unpainted) if self.with_overlay else None
            if picture is not None:
                record["overlay"] = f"overlays/{stem}.png"
                write_png(picture, out / record["overlay"])
            self.written |= {out / record[key] for key in ("label", "overlay", "panoptic") if key in record}
            self.records.append({**record, "seconds": seconds})
