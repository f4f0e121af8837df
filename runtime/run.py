"""The job behind ssp-run: segment files, write label PNGs, overlays and a JSON summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .backends import open_runner
from .files import atomic_path, write_text_atomic
from .images import ImageError, find_images, read_image
from .postprocess import overlay
from .segmenter import Segmenter

__all__ = ["segment_files", "write_png"]


def write_png(array: np.ndarray, path: Path) -> None:
    """Write an image atomically: a temporary file beside `path`, then rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _label_image(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return stems


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
) -> dict:
    """Segment every image under `inputs`; returns (and writes as out/summary.json) a summary.

    A bad image is reported by name and skipped (`skip_bad`) or stops the run; files already
    written stay complete, since each is written to a temporary name and renamed.
    """
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    paths = find_images(list(inputs))
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    if with_overlay:
        (out / "overlays").mkdir(exist_ok=True)
    records, skipped = [], []
    with open_runner(model, backend, provider, batch=batch, cuda_graph=True) as runner:
        for note in runner.notes:
            log(note)
        segmenter = Segmenter(runner)
        stems = _unique_stems(paths)
        bar = tqdm(total=len(paths), desc="segment", unit="img", disable=not progress)
        for start in range(0, len(paths), batch):
            chunk = list(zip(paths[start:start + batch], stems[start:start + batch]))
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
                label_maps = segmenter.segment(images)
                seconds = (time.perf_counter() - began) / len(images)
                for (path, stem), image, labels in zip(kept, images, label_maps):
                    write_png(_label_image(labels, len(segmenter.class_names)), out / "labels" / f"{stem}.png")
                    if with_overlay:
                        write_png(overlay(image, labels, segmenter.palette), out / "overlays" / f"{stem}.png")
                    present = [segmenter.class_names[c] for c in np.unique(labels) if c < len(segmenter.class_names)]
                    records.append({"file": str(path), "label": f"labels/{stem}.png", "height": int(labels.shape[0]),
                                    "width": int(labels.shape[1]), "classes": present, "seconds": seconds})
            bar.update(len(chunk))
        bar.close()
        summary = {"model": str(model), "backend": runner.backend, "device": runner.device,
                   "precision": runner.metadata.get("precision"), "images": records, "skipped": skipped}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
