"""The job behind ssp-run: segment files, write label PNGs (semantic), COCO results (instance) or COCO panoptic
PNGs and JSON (panoptic), overlays and a JSON summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from .coco import categories
from .contract import GraphMetadata
from .errors import OptionError
from .files import NAME_MAX, cut_name, exclusive, remove_stale_temporaries, write_bytes_atomic, write_text_atomic
from .images import ImageError, find_images, read_image
from .instances import InstanceOptions, PanopticOptions
from .memory import peak_rss_mb, reset_peak_rss, rss_mb
from .outputs import TaskSettings, encode_image, task_json
from .runner import open_runner
from .segmenter import Segmenter
from .tasks import OVERLAY_FOLDER, OVERLAY_KEY, TASKS

# The folders of --out that hold one file an image; never read as input, even where --out is an input folder.
OUTPUT_FOLDERS = (*(task.folder for task in TASKS.values() if task.folder), OVERLAY_FOLDER)
# The keys of an image's entry in summary.json that name its files.
_FILE_KEYS = (*(task.file_key for task in TASKS.values() if task.file_key), OVERLAY_KEY)
# A stem leaves room for a clash's suffix (_12345) and .png within one path component.
_STEM_BYTES = NAME_MAX - len("_12345.png")
# One call may take at most this share of the memory available when the run starts.
CALL_MEMORY_SHARE = 0.5

__all__ = ["segment_files", "unique_names", "prepare_output", "finish_output", "comparable_outputs", "OUTPUT_FOLDERS"]


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
        files = {out / record[key] for record in earlier["images"] for key in _FILE_KEYS if record.get(key)}
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


def _write_outputs(out: Path, summary: dict, coco: list[dict], earlier: set[Path], written: set[Path], log) -> None:
    """The task's JSON (from every image's `coco`), the earlier run's files this one did not rewrite removed, then
    summary.json (last, so that a folder with a summary is a finished one or says it stopped): the folder and its
    summary agree."""
    name = TASKS[summary["task"]].json_file
    if name:
        write_text_atomic(out / name, task_json(summary["task"], coco, summary["categories"]))
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
    cluster=None,
    on_row=None,
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

    With `cluster` (a cluster.ClusterConfig), the same job and the same files through a Ray Data
    pipeline (cluster.py; `on_row` sees each image's row as it comes back).

    Raises:
      ImageError: no input image, an unreadable one with `skip_bad` off, or none segmented.
      LockedError: another run is writing `out`.
    """
    if batch < 1:
        raise OptionError(f"--batch must be at least 1, got {batch}")
    out = Path(out)
    settings = TaskSettings(task, with_overlay, instance_options, panoptic_options)
    if cluster is not None:
        from .cluster import segment_files_ray

        with exclusive(out, "output folder"):
            return segment_files_ray(model, inputs, out, batch, settings, skip_bad, backend, provider, progress, log,
                                     cluster, on_row)
    paths = find_images(list(inputs), exclude=[out / name for name in OUTPUT_FOLDERS])
    with exclusive(out, "output folder"), open_runner(model, backend, provider) as runner:
        for note in runner.notes:
            log(note)
        segmenter = Segmenter(runner)
        segmenter.check_task(task)
        earlier = _previous_outputs(out)
        state = _Run(out, segmenter, settings)
        names = unique_names(paths)
        jobs = [(path, stem, i + 1) for i, (path, stem) in enumerate(zip(paths, names))]
        bar = tqdm(total=len(paths), desc="segment", unit="img", disable=not progress)
        summary = _summary(model, runner.backend, runner.device, runner.metadata, task, state.records, state.skipped)
        try:
            _remove_stale_temporaries(out)
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
                    _write_outputs(out, summary, state.coco, earlier, state.written, log)
                except OSError:
                    pass  # the disk that failed the run may fail this too; the original error says why
            raise
    if not state.records:
        raise ImageError(f"none of the {len(paths)} input images could be segmented ({len(state.skipped)} unreadable); nothing written")
    summary["complete"] = True
    _write_outputs(out, summary, state.coco, earlier, state.written, log)
    return summary


def _summary(model: str | Path, backend: str, device: str, meta: GraphMetadata, task: str, records: list[dict],
             skipped: list[dict]) -> dict:
    return {"model": str(model), "backend": backend, "device": device, "precision": meta.precision, "task": task,
            "categories": categories(meta.class_names, meta.thing_classes, meta.palette),
            "files": [TASKS[task].json_file] if TASKS[task].json_file else [], "images": records, "skipped": skipped}


def _remove_stale_temporaries(out: Path) -> None:
    for folder in (out, *(out / name for name in OUTPUT_FOLDERS)):
        remove_stale_temporaries(folder)


def prepare_output(out: Path) -> set[Path]:
    """Before a run writes into `out`: removes temporaries that dead writers left there; returns the files
    an earlier run listed in out/summary.json."""
    earlier = _previous_outputs(out)
    _remove_stale_temporaries(out)
    return earlier


def finish_output(out: Path, model: str | Path, backend: str, device: str, meta: GraphMetadata, task: str,
                  records: list[dict], skipped: list[dict], coco: list[dict], earlier: set[Path], written: set[Path],
                  inputs: int, log=print) -> dict:
    """After every image's files are written: the task's JSON file, the earlier run's files this one did not
    write removed, then summary.json; returns it. `records` and `coco` are in image-id order; `written` holds
    the image files this run wrote.

    Raises:
      ImageError: no image segmented (nothing is written then).
    """
    if not records:
        raise ImageError(f"none of the {inputs} input images could be segmented ({len(skipped)} unreadable); nothing written")
    summary = {**_summary(model, backend, device, meta, task, records, skipped), "complete": True}
    _write_outputs(out, summary, coco, earlier, set(written), log)
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


class _Run:
    """What one ssp-run has segmented and written so far."""

    def __init__(self, out: Path, segmenter: Segmenter, settings: TaskSettings) -> None:
        self.out, self.segmenter, self.settings = out, segmenter, settings
        self.records: list[dict] = []
        self.skipped: list[dict] = []
        self.written: set[Path] = set()
        self.coco: list[dict] = []  # every image's instances.json records or panoptic.json annotation, in order

    def segment(self, chunk: list[tuple[Path, str, int]], skip_bad: bool, log) -> None:
        """Read, segment and write one call's images: (path, output stem, image id) each."""
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
        settings = self.settings
        began = time.perf_counter()
        results = self.segmenter.run(settings.task, images, settings.instance_options, settings.panoptic_options)
        seconds = (time.perf_counter() - began) / len(images)
        for (path, stem, image_id), image, result in zip(kept, images, results):
            encoded = encode_image(self.segmenter.runner.metadata, settings, result, str(path), stem, image_id,
                                   image.shape[:2], image)
            for name, data in encoded.files.items():
                write_bytes_atomic(self.out / name, data)
                self.written.add(self.out / name)
            self.coco += encoded.coco
            self.records.append({**encoded.record, "seconds": seconds})
