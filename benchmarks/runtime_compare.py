"""Our one exported graph against the pipelines a user would otherwise glue together on the host.

Every pipeline takes the same letterboxed uint8 images and returns the same thing, a per-pixel
label map over the square model input. Per (pipeline, backend, precision, batch) the script
measures latency p50 / p99 per call, images/s, host peak RSS and GPU peak memory, FLOPs per
image (torch.utils.flop_counter) against the device's measured GEMM throughput, and how often
each pipeline's labels agree with the graph's.

Pipelines:
1. ssprompt graph (ONNX Runtime): the exported model.onnx through ssprompt.runtime's runner
   (and a TensorRT plan where `tensorrt` imports and CUDA is present);
2. ssprompt graph (torch eager): the module that export traces, run eagerly;
3. unfused (torch eager): the same math glued by hand from SAM's and ssprompt's modules:
   image encoders, then SAM's prompt encoder and MaskDecoder.forward over the point grid in
   batches of --points-per-batch, then mask classification and the semantic map;
4. SAM automatic mask generator + CLIP on crops (torch eager): segment_anything's
   SamAutomaticMaskGenerator, each mask's box crop classified by CLIP, masks painted largest first.

Each row runs in its own process (this script re-invoked with a hidden --worker argument), so
its peak RSS is its own. Random weights: see the notes the script writes into the table.

    python benchmarks/runtime_compare.py --out benchmarks/results/runtime_compare_cpu.md
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, random_fullsize_pack, run_in_worker, table_lines, write_plot  # noqa: E402

ORT = "ssprompt graph (ONNX Runtime)"
TRT = "ssprompt graph (TensorRT)"
EAGER = "ssprompt graph (torch eager)"
UNFUSED = "unfused (torch eager)"
AMG = "SAM automatic mask generator + CLIP on crops (torch eager)"
PIPELINES = {"ort": ORT, "trt": TRT, "graph": EAGER, "unfused": UNFUSED, "amg": AMG}
TORCH_KINDS = ("graph", "unfused", "amg")

# SamAutomaticMaskGenerator's thresholds, relaxed so that a SAM with random weights keeps about
# 100 masks an image, as a trained SAM does on a typical photo. A random SAM's masks are faint
# (logits within about +-0.3) and each covers most of the image: SAM's defaults (pred_iou 0.88,
# stability 0.95 at offset 1.0, box NMS 0.7) keep none, or one, since every box is the whole
# image. So stability filtering and NMS are off (NMS still runs) and the predicted-IoU threshold
# alone keeps the top ~100 of the 3 x 32^2 candidates; measured on one generated scene
# (random ViT-B: 0.077; tiny, whose IoU head is biased: 0.512). Other SAM types use ViT-B's.
AMG_PRED_IOU = {"vit_b": 0.077, "tiny": 0.512}
AMG_DEFAULTS = {"stability_score_thresh": 0.0, "stability_score_offset": 1.0, "box_nms_thresh": 1.0}

COLUMNS = ["pipeline", "backend", "precision", "batch", "p50 ms", "p99 ms", "images/s", "host peak RSS MB",
           "GPU peak MB", "masks/image", "GFLOP/image", "achieved GFLOP/s", "% of peak", "label agreement vs graph %",
           "max abs confidence diff vs graph"]


# --------------------------------------------------------------------------- shared by parent and workers


@dataclass(frozen=True)
class RowSpec:
    kind: str  # a key of PIPELINES
    precision: str  # fp32 or fp16

    @property
    def pipeline(self) -> str:
        return PIPELINES[self.kind]

    @property
    def tag(self) -> str:
        return f"{self.kind}-{self.precision}"


REFERENCE = RowSpec("graph", "fp32")  # the rows' labels are compared with this one's


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker side


class GpuPeak:
    """Peak GPU memory of this worker: torch's allocator peak on torch rows, NVML on runtime rows."""

    def __init__(self, device: str, torch_rows: bool) -> None:
        self.enabled = device == "cuda"
        self.torch_rows = torch_rows
        if self.enabled and not torch_rows:
            from ssprompt.runtime.memory import GpuMemory

            self.nvml = GpuMemory()
        else:
            self.nvml = None

    def reset(self) -> None:
        if self.enabled and self.torch_rows:
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.nvml is not None:
            self.nvml.peak = 0

    def sample(self) -> None:
        if self.nvml is not None:
            self.nvml.sample()

    def peak_mb(self) -> float | None:
        if not self.enabled:
            return None
        if self.torch_rows:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return self.nvml.peak_mb


Outputs = tuple  # (labels (B, S, S) int, confidence (B, S, S) float or None): what every pipeline returns


def time_batches(call: Callable[[np.ndarray], Outputs], images: np.ndarray, spec: dict, gpu: GpuPeak) -> tuple[dict, dict]:
    """Time `call` per batch size (ascending); the peaks start afresh before each batch size.

    Returns:
      (dict): per batch (as a string): times_ms, host_peak_rss_mb, gpu_peak_mb.
      (dict): the outputs of each batch size's last timed call: labels as b<batch>, confidence as c<batch>.
    """
    from ssprompt.runtime.bench import time_calls
    from ssprompt.runtime.memory import peak_rss_mb, reset_peak_rss

    results, labels = {}, {}
    for batch in sorted(spec["batches"]):
        feed = images[:batch]
        reset_peak_rss()
        gpu.reset()
        last: list = []

        def timed() -> None:
            last[:] = [call(feed)]  # only the last call's outputs are kept: they are compared with the reference

        times, _ = time_calls(timed, spec["warmup"], spec["iters"], after_each=gpu.sample)
        out = last[0]
        labels[f"b{batch}"] = np.asarray(out[0], dtype=np.int32)
        if out[1] is not None:
            labels[f"c{batch}"] = np.asarray(out[1], dtype=np.float32)
        results[str(batch)] = {"times_ms": times, "host_peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu.peak_mb()}
        log(f"    [{spec['kind']} {spec['precision']}] batch {batch}: p50 {np.median(times):.1f} ms")
    return results, labels


def load_model(pack_path: str):
    """The pack's SSPrompt on the CPU, without the CLIP text tower (nothing here needs it)."""
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack

    model, backbones = model_from_pack(load_pack(pack_path), device="cpu")
    del backbones
    gc.collect()
    return model.eval()


def autocast(device: str, fp16: bool):
    import torch

    return torch.autocast(device_type=device, dtype=torch.float16, enabled=fp16)


class EagerGraph:
    """Pipeline 2: ExportGraph, the module that export traces, run eagerly."""

    def __init__(self, model, device: str, fp16: bool) -> None:
        from ssprompt.export.graph import ExportGraph

        self.graph = ExportGraph(model).to(device).eval()
        self.device, self.fp16 = device, fp16

    def __call__(self, images: np.ndarray) -> Outputs:
        import torch

        with torch.inference_mode(), autocast(self.device, self.fp16):
            labels, confidence = self.graph(torch.from_numpy(images).to(self.device))[:2]
        return labels.cpu().numpy(), confidence.float().cpu().numpy()


class Unfused:
    """Pipeline 3: the graph's math glued from SAM's own modules in Python.

    The encoders run once per image (batched over the call's images); SAM's MaskDecoder
    takes one image at a time, so each image decodes its point grid in batches of
    `points_per_batch`, as SAM's automatic mask generator does.
    """

    def __init__(self, model, device: str, fp16: bool, points_per_batch: int) -> None:
        import torch.nn.functional as F

        if model.config.method != "ssprompt":  # `segment` re-creates SSPrompt's fusion by hand, as a user would
            raise SystemExit(f"the unfused pipeline glues SSPrompt's prompts; this pack's method is {model.config.method}")
        self.model = model.to(device)
        self.device, self.fp16, self.points_per_batch = device, fp16, points_per_batch
        self.semantic = F.normalize(model.semantic_prompts().detach(), dim=-1)

    def __call__(self, images: np.ndarray) -> Outputs:
        import torch
        import torch.nn.functional as F

        model, sam = self.model, self.model.sam
        with torch.inference_mode(), autocast(self.device, self.fp16):
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
            embeddings = sam.image_encoder((x - sam.pixel_mean) / sam.pixel_std)
            size = model.clip_input_size
            clip_x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if size != x.shape[-1] else x
            features = model.clip_dense((clip_x - model.clip_mean) / model.clip_std)
            semantic = torch.cat([self.segment(embeddings[i:i + 1], features[i:i + 1], x.shape[-1])
                                  for i in range(len(images))])  # (B, C, S, S) class probabilities
            confidence, labels = semantic.max(dim=1)
            return labels.cpu().numpy(), confidence.float().cpu().numpy()

    def segment(self, embedding, features, size: int):
        import torch
        import torch.nn.functional as F

        from ssprompt.train.model import mask_class_logits, semantic_map
        from ssprompt.train.methods.ssprompt import fuse_prompts

        model, sam = self.model, self.model.sam
        image_pe = sam.prompt_encoder.get_dense_pe()
        masks, ious = [], []
        for start in range(0, model.num_prompts, self.points_per_batch):
            part = slice(start, start + self.points_per_batch)
            points = model.grid_points[part]
            point_labels = torch.ones(points.shape[0], 1, device=points.device)
            sparse, dense = sam.prompt_encoder(points=(points[:, None, :], point_labels), boxes=None, masks=None)
            sparse = fuse_prompts(model.prompts.spatial_embedding[part], sparse, model.prompts.spatial_weight_logit[part])
            mask, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                                         dense_prompt_embeddings=dense, multimask_output=False)
            masks.append(mask[:, 0])
            ious.append(iou[:, 0])
        masks, iou = torch.cat(masks)[None], torch.cat(ious)[None]  # (1, N, m, m), (1, N)
        class_logits = mask_class_logits(masks, features, self.semantic, model.logit_scale)
        return F.interpolate(semantic_map(masks, iou, class_logits), size=(size, size), mode="bilinear", align_corners=False)


class MaskGeneratorClip:
    """Pipeline 4: SAM's automatic mask generator, then CLIP on each mask's box crop.

    One image at a time (the generator takes one). Pixels no mask covers keep class 0.
    """

    def __init__(self, model, device: str, fp16: bool, amg: dict, points_per_batch: int, clip_batch: int) -> None:
        import torch.nn.functional as F
        from segment_anything import SamAutomaticMaskGenerator

        model = model.to(device)
        self.generator = SamAutomaticMaskGenerator(model.sam, points_per_batch=points_per_batch, **amg)
        # CLIP.encode_image is `visual(x)`; calling the image tower directly leaves the text tower unloaded.
        self.visual = model.clip_dense.visual
        size = self.visual.image_size
        self.clip_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.clip_mean, self.clip_std = model.clip_mean, model.clip_std
        self.semantic = F.normalize(model.semantic_prompts().detach(), dim=-1)
        self.device, self.fp16, self.clip_batch = device, fp16, clip_batch
        self.kept: list[int] = []

    def __call__(self, images: np.ndarray) -> Outputs:
        return np.stack([self.segment(image) for image in images]), None

    def segment(self, image: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(self.device, self.fp16):
            records = self.generator.generate(image)
            self.kept.append(len(records))
            labels = np.zeros(image.shape[:2], dtype=np.int32)
            if not records:
                return labels
            classes = self.classify(image, [r["bbox"] for r in records])
        for i in sorted(range(len(records)), key=lambda i: -records[i]["area"]):  # largest first: small masks stay on top
            labels[records[i]["segmentation"]] = classes[i]
        return labels

    def classify(self, image: np.ndarray, boxes: list) -> np.ndarray:
        """Class per box: the crop resized to CLIP's input size, cosine with the semantic prompts."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float()[None]  # (1, 3, S, S)
        classes = []
        for start in range(0, len(boxes), self.clip_batch):
            crops = []
            for bx, by, bw, bh in boxes[start:start + self.clip_batch]:
                x0, y0 = int(bx), int(by)  # SAM's boxes are inclusive: the crop ends one past x0 + w
                crop = x[..., y0:y0 + int(bh) + 1, x0:x0 + int(bw) + 1]
                crops.append(F.interpolate(crop, size=(self.clip_size, self.clip_size), mode="bilinear",
                                           align_corners=False, antialias=True))
            batch = (torch.cat(crops) - self.clip_mean) / self.clip_std
            embedding = F.normalize(self.visual(batch).float(), dim=-1)
            classes.append((embedding @ self.semantic.t().float()).argmax(dim=-1))
        return torch.cat(classes).cpu().numpy()


def count_flops(call: Callable[[np.ndarray], Outputs], image: np.ndarray) -> float:
    """FLOPs of one call on one image, by torch's FlopCounterMode (matmuls, convolutions, attention).

    Attention runs through SDPA's math backend and MultiheadAttention without its fused fast
    path while counting, so every attention product reaches the counter as a matmul.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            call(image[None])
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


def runtime_worker(spec: dict) -> dict:
    """Pipeline 1: the exported graph through ssprompt.runtime (no torch in this process), as ssp-bench runs
    it by default: one session per batch size."""
    from ssprompt.runtime.runner import open_runner
    from ssprompt.runtime.contract import CONFIDENCE, INPUT, LABELS

    images = np.load(spec["images"])
    gpu = GpuPeak(spec["device"], torch_rows=False)
    results, labels = {}, {}
    for batch in sorted(spec["batches"]):
        runner = open_runner(spec["model"], backend="tensorrt" if spec["kind"] == "trt" else "onnxruntime",
                             provider=spec["provider"])

        def call(feed: np.ndarray) -> Outputs:
            outputs = runner.infer({INPUT: feed}, [LABELS, CONFIDENCE])
            return outputs[LABELS], outputs[CONFIDENCE]

        with runner:
            result, label = time_batches(call, images, dict(spec, batches=[batch]), gpu)
            backend = f"{runner.backend} {runner.device}"
        results.update(result)
        labels.update(label)
    np.savez(spec["labels"], **labels)
    masks = runner.metadata.num_prompts
    return {"backend": backend, "batches": results, "masks_per_image": masks, "flops_per_image": None}


def torch_worker(spec: dict) -> dict:
    """Pipelines 2-4 in torch eager."""
    from ssprompt.runtime.memory import reset_peak_rss

    device, fp16 = spec["device"], spec["precision"] == "fp16"
    images = np.load(spec["images"])
    model = load_model(spec["pack"])
    masks = float(model.num_prompts)
    if spec["kind"] == "graph":
        pipeline = EagerGraph(model, device, fp16)
        del model  # ExportGraph holds its own copy
    elif spec["kind"] == "unfused":
        pipeline = Unfused(model, device, fp16, spec["points_per_batch"])
    else:
        pipeline = MaskGeneratorClip(model, device, fp16, spec["amg"], spec["points_per_batch"], spec["clip_batch"])
    gc.collect()
    reset_peak_rss()
    gpu = GpuPeak(device, torch_rows=True)
    results, labels = time_batches(pipeline, images, spec, gpu)
    np.savez(spec["labels"], **labels)
    if spec["kind"] == "amg":
        masks = float(np.mean(pipeline.kept))
    flops = count_flops(pipeline, images[0]) if spec["count_flops"] else None
    from ssprompt.runtime.gpu import gpu_name

    backend = f"torch {gpu_name() or 'GPU' if device == 'cuda' else 'CPU'}"
    return {"backend": backend, "batches": results, "masks_per_image": masks, "flops_per_image": flops}


def gemm_worker(spec: dict) -> dict:
    """Measured peak: the best of a few square matmuls per precision, in GFLOP/s."""
    import torch

    device, n = spec["device"], spec["gemm_size"]
    peaks = {}
    for precision in spec["precisions"]:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best, spent = float("inf"), 0.0
        for rep in range(12):
            began = time.perf_counter()
            torch.matmul(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - began
            spent += seconds
            if rep > 0:  # the first call warms up
                best = min(best, seconds)
            if spent > 3.0 and rep >= 2:
                break
        peaks[precision] = 2 * n**3 / best / 1e9
        log(f"    GEMM {n}x{n} {precision} on {device}: {peaks[precision]:.0f} GFLOP/s")
    return {"peaks": peaks}


def engine_worker(spec: dict) -> dict:
    """A TensorRT plan of the pack (needs CUDA, so it is built outside the parent process)."""
    from ssprompt.export.pipeline import export_pack
    from ssprompt.export.tensorrt import BatchRange

    biggest = max(spec["batches"])
    result = export_pack(Path(spec["pack"]), Path(spec["out"]), fp16=spec["precision"] == "fp16", engine=True,
                         batch=BatchRange(1, biggest, biggest), parity_gate=False,
                         log=lambda message: log(f"    engine {spec['precision']}: {message}"))
    return {"plan": str(result.engine) if result.engine else None}


WORKERS = {"ort": runtime_worker, "trt": runtime_worker, "graph": torch_worker, "unfused": torch_worker,
           "amg": torch_worker, "gemm": gemm_worker, "engine": engine_worker}


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = WORKERS[spec["kind"]](spec)
    Path(spec["result"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent side


def run_worker(spec: dict, work: Path) -> tuple[dict | None, str]:
    """One worker process for `spec`; returns (result, last error line)."""
    result = work / f"{spec['kind']}-{spec.get('precision', 'all')}.json"
    return run_in_worker(Path(__file__).resolve(), ["--worker", json.dumps(dict(spec, result=str(result)))], result)


def model_for(row: RowSpec, spec: dict, onnx: dict[str, Path], work: Path) -> tuple[str | None, str]:
    """The model file a row runs: the pack for torch rows, model.onnx, or a TensorRT plan built here."""
    if row.kind in TORCH_KINDS:
        return spec["pack"], ""
    if row.kind == "ort":
        return str(onnx[row.precision]), ""
    built, error = run_worker(dict(spec, kind="engine", out=str(work / f"engine-{row.precision}")), work)
    if not built or not built["plan"]:
        return None, f"engine build: {error or 'no plan written'}"
    return built["plan"], ""


def plan_rows(device: str, fp16: bool, tensorrt: bool) -> tuple[list[RowSpec], list[str]]:
    """The rows to run, and a note for each row left out."""
    precisions = ["fp32", "fp16"] if fp16 else ["fp32"]
    rows, skipped = [], []
    for precision in precisions:
        rows.append(RowSpec("ort", precision))
        if tensorrt:
            rows.append(RowSpec("trt", precision))
        for kind in TORCH_KINDS:
            if precision == "fp16" and device != "cuda":
                continue
            rows.append(RowSpec(kind, precision))
    if not tensorrt:
        why = "no CUDA device" if device != "cuda" else "`tensorrt` does not import"
        skipped.append(f"{TRT}: not run ({why}).")
    if device != "cuda":
        if fp16:
            skipped.append("fp16 torch eager rows: not run (torch eager fp16 means torch.autocast float16 on CUDA; "
                           "on a CPU that is not a deployment anyone would choose).")
        else:
            skipped.append("fp16 rows: not run (not asked for: pass --fp16; torch eager fp16 runs on CUDA only).")
    return rows, skipped


def summarise(row: RowSpec, result: dict, batch: str, flops: dict, peaks: dict,
              agreed: tuple[float | None, float | None]) -> list[str]:
    """One table row's cells."""
    data = result["batches"][batch]
    times = np.asarray(data["times_ms"])
    per_s = int(batch) / (times.mean() / 1e3)
    flop = flops.get("graph" if row.kind in ("ort", "trt") else row.kind)
    peak = peaks.get(row.precision, peaks.get("fp32"))

    def number(value: float | None, digits: int, style: str = "f") -> str:
        return "n/a" if value is None else f"{value:.{digits}{style}}"

    achieved = None if flop is None else flop / 1e9 * per_s
    return [
        row.pipeline, result["backend"], row.precision, batch,
        number(float(np.percentile(times, 50)), 1), number(float(np.percentile(times, 99)), 1), number(per_s, 3),
        number(data["host_peak_rss_mb"], 0), number(data["gpu_peak_mb"], 0),
        number(result["masks_per_image"], 1),
        number(None if flop is None else flop / 1e9, 1), number(achieved, 1),
        number(None if achieved is None or not peak else 100 * achieved / peak, 2),
        *(["ref.", "ref."] if row == REFERENCE else [number(agreed[0], 2), number(agreed[1], 1, "e")]),
    ]


def agreement(outputs: Path, reference: Path, batch: str) -> tuple[float | None, float | None]:
    """% of pixels whose label equals the reference's, and max |confidence difference| where a row has one."""
    if not reference.is_file() or not outputs.is_file():
        return None, None
    with np.load(outputs) as ours, np.load(reference) as ref:
        labels = float(100 * np.mean(ours[f"b{batch}"] == ref[f"b{batch}"]))
        key = f"c{batch}"
        confidence = float(np.abs(ours[key] - ref[key]).max()) if key in ours and key in ref else None
    return labels, confidence


def draw_throughput(table: list[list[str]]) -> Callable:
    """images/s per pipeline/backend/precision, one bar per batch size."""
    def draw(ax) -> None:
        labels = list(dict.fromkeys(f"{r[0]}\n{r[1]}, {r[2]}" for r in table))
        batches = sorted({int(r[3]) for r in table})
        height = 0.8 / len(batches)
        for j, batch in enumerate(batches):
            values = {f"{r[0]}\n{r[1]}, {r[2]}": float(r[6]) for r in table if int(r[3]) == batch}
            ys = [i + j * height for i in range(len(labels))]
            ax.barh(ys, [values.get(label, 0.0) for label in labels], height=height, label=f"batch {batch}")
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("images / s (log scale)")
        ax.legend(fontsize=7)
    return draw


def notes(args: argparse.Namespace, device: str, skipped: list[str], peaks: dict, gemm_size: int) -> list[str]:
    amg = ", ".join(f"{k} {v}" for k, v in amg_settings(args).items())
    cpu_peak = "; on CPU every row is compared with the fp32 GEMM (torch's CPU fp16 matmul is far slower, no ceiling)"
    peak_text = ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items()) or "not measured"
    lines = [
        f"{args.prompts} spatial prompts, {args.classes} classes; device {device}; batches {args.batch}, "
        f"{args.warmup} warm-up and {args.iters} timed calls per batch.",
        "",
        "Notes:",
        "",
        "- **Random weights.** SAM and CLIP hold seeded random weights: latency, memory and FLOPs do not depend on "
        "weight values, but the labels are meaningless, and the AMG's mask count does depend on them (next note).",
        f"- **Relaxed AMG thresholds** ({amg}, points_per_side {args.amg_points_per_side}). A random SAM's masks are "
        "faint (logits within about +-0.3) and each covers most of the image, so SAM's defaults (pred_iou 0.88, "
        "stability 0.95, box NMS 0.7) keep none or one mask an image, and the AMG pipeline would look far cheaper "
        "than with real weights (no CLIP crops, nothing to paint). Stability filtering and NMS are therefore off "
        "(NMS still runs) and the predicted-IoU threshold keeps the top ~100 of the candidates, chosen on one "
        "generated scene per SAM type; `masks/image` is the mean kept. For the other pipelines it is the N prompt "
        "masks they decode. Residual bias: random masks are speckled and image-sized, so SAM's run-length encoding "
        "and the painting cost more per mask, and each CLIP crop is the whole image, than with real weights.",
        "- Every row (pipeline x backend x precision) runs in its own process. Host peak RSS is that process's VmHWM, "
        "reset after loading the model and before each batch size (batches run in ascending order, so memory an "
        "allocator kept from a smaller batch can count toward a larger one).",
        "- GPU peak MB: torch.cuda.max_memory_allocated on torch rows; on runtime rows NVML's device memory in use "
        "(the whole device, CUDA context included, as ssp-bench reports it), n/a without NVML or CUDA.",
        "- Latency is host wall time per call, uint8 images in and the label map back on the host, for every row.",
        "- The graph on ONNX Runtime runs as ssp-bench runs it by default, one session per batch size; it copies the "
        "labels and confidences back.",
        *([f"- AMG rows capped (--amg-images {args.amg_images}): batch 1 only, no warm-up, {args.amg_images} timed images, "
           "no FLOP count (the CPU table has it)."] if args.amg_images else []),
        "- The unfused pipeline batches the encoders over a call's images; SAM's MaskDecoder takes one image, so it "
        f"decodes each image's points in batches of {args.points_per_batch}. The AMG pipeline takes one image at a "
        "time (a batch is a loop); pixels no kept mask covers get class 0.",
        "- Label agreement: % of pixels whose label equals the torch-eager fp32 graph's on the same images. The unfused "
        "pipeline computes the same math, so it should agree on ~100 %; the AMG pipeline is another method and is "
        "shown for completeness only. With random weights a label map is often one class almost everywhere, which "
        "makes label agreement easy; the max |confidence difference| (the winning class's probability per pixel, "
        "which the graph outputs and the unfused glue computes) is the sensitive check (AMG has no such output).",
        "- FLOPs: torch.utils.flop_counter.FlopCounterMode on one image (matmuls, convolutions, attention; 2 FLOPs "
        "per multiply-add; elementwise work, resizes and NMS are not counted). Runtime rows use the torch graph's "
        "count (the same graph). Achieved GFLOP/s = GFLOP/image x images/s.",
        f"- Peak: the measured throughput of a {gemm_size} x {gemm_size} torch.matmul at the row's precision on this "
        f"device ({peak_text}), not a spec-sheet number{cpu_peak if device != 'cuda' else ''}."
        + (" ONNX Runtime's CUDA provider runs FP32 matmuls in TF32 by default, so its FP32 rows can pass the FP32 "
           "peak, which torch measures without TF32." if device == "cuda" else ""),
        *(["- FLOPs were not counted (--no-flops)."] if not args.flops else []),
        *(f"- {line}" for line in skipped),
        "",
    ]
    return lines


def amg_settings(args: argparse.Namespace) -> dict:
    return {
        "pred_iou_thresh": args.amg_pred_iou_thresh,
        "stability_score_thresh": args.amg_stability_score_thresh,
        "stability_score_offset": args.amg_stability_score_offset,
        "box_nms_thresh": args.amg_box_nms_thresh,
    }


def parse_args() -> argparse.Namespace:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--batch", default="1,2", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--provider", default="auto",
                        help="ONNX Runtime provider: auto (CUDA on cuda, else CPU), cpu, cuda, tensorrt")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                        help="also run fp16 rows (default: on with CUDA, off on CPU)")
    parser.add_argument("--images", type=Path, help="folder of images (default: generated scenes)")
    parser.add_argument("--points-per-batch", type=int, default=64, help="decoder points per call, unfused and AMG")
    parser.add_argument("--clip-batch", type=int, default=32, help="crops per CLIP call in the AMG pipeline")
    parser.add_argument("--amg-points-per-side", type=int, default=32)
    parser.add_argument("--amg-pred-iou-thresh", type=float,
                        help=f"default per SAM type, calibrated on random weights: {AMG_PRED_IOU}, else vit_b's")
    parser.add_argument("--amg-stability-score-thresh", type=float, default=AMG_DEFAULTS["stability_score_thresh"])
    parser.add_argument("--amg-stability-score-offset", type=float, default=AMG_DEFAULTS["stability_score_offset"])
    parser.add_argument("--amg-box-nms-thresh", type=float, default=AMG_DEFAULTS["box_nms_thresh"])
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
    parser.add_argument("--gemm-size", type=int, help="side of the peak-measuring GEMM (default 4096 CUDA, 2048 CPU)")
    parser.add_argument("--amg-images", type=int,
                        help="cap the AMG rows: batch 1 only, no warm-up, this many timed images, no FLOP count")
    parser.add_argument("--work", type=Path, help="reuse pack.pt and fp32/, fp16/ exports from export_fullsize.py --work")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_compare_cpu.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.amg_pred_iou_thresh is None:
        args.amg_pred_iou_thresh = AMG_PRED_IOU.get(args.sam, AMG_PRED_IOU["vit_b"])
    args.batches = sorted({int(b) for b in args.batch.split(",")})
    if min(args.batches) < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("batches and --iters must be positive, --warmup non-negative")
    return args


def export_graphs(pack: Path, work: Path, precisions: list[str]) -> dict[str, Path]:
    """model.onnx per precision (no parity gate: the label agreement column measures it)."""
    from ssprompt.export.pipeline import export_pack

    return {p: export_pack(pack, work / f"model-{p}", fp16=p == "fp16", parity_gate=False,
                           log=lambda m: print(f"  export {p}: {m}", flush=True)).onnx for p in precisions}


def reuse_exports(work: Path | None, precisions: list[str]) -> tuple[Path | None, dict[str, Path]]:
    """pack.pt and <precision>/model.onnx that export_fullsize.py --work left in `work`, if all are there."""
    if work is None or not (work / "pack.pt").is_file():
        return None, {}
    onnx = {p: work / p / "model.onnx" for p in precisions}
    if not all(path.is_file() for path in onnx.values()):
        return None, {}
    print(f"reusing {work / 'pack.pt'} and its exports", flush=True)
    return work / "pack.pt", onnx


def write_images(onnx: Path, images_dir: Path | None, count: int, path: Path) -> None:
    """`count` letterboxed images, SAM's pad value, at the graph's input size (from its metadata)."""
    import onnx as onnx_lib

    from ssprompt.export.pipeline import calibration_images
    from ssprompt.runtime.contract import GraphMetadata

    proto = onnx_lib.load(str(onnx), load_external_data=False)
    meta = GraphMetadata.decode({p.key: p.value for p in proto.metadata_props})
    images = calibration_images(meta.input_size, tuple(meta.pad_value), images_dir, count)
    np.save(path, images[np.arange(count) % len(images)])


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    from ssprompt.export.tensorrt import tensorrt_available
    from ssprompt.runtime.files import write_text_atomic

    from ssprompt.train.pipeline import pick_device

    try:
        device = pick_device(args.device).type
    except ValueError as err:
        raise SystemExit(str(err)) from None
    fp16 = device == "cuda" if args.fp16 is None else args.fp16
    tensorrt = device == "cuda" and tensorrt_available()
    rows, skipped = plan_rows(device, fp16, tensorrt)
    precisions = sorted({r.precision for r in rows}, reverse=True)  # fp32 first
    gemm_size = args.gemm_size or (4096 if device == "cuda" else 2048)
    provider = args.provider if args.provider != "auto" else ("cuda" if device == "cuda" else "cpu")
    began = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pack, onnx = reuse_exports(args.work, precisions)
        if pack is None:
            print(f"building a random {args.sam} + {args.clip} pack and exporting the graph", flush=True)
            pack = random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, work / "pack.pt")
            onnx = export_graphs(pack, work, precisions)
        write_images(onnx["fp32"], args.images, max(args.batches), work / "images.npy")
        base = {"device": device, "batches": args.batches, "warmup": args.warmup, "iters": args.iters,
                "images": str(work / "images.npy"), "pack": str(pack), "provider": provider,
                "points_per_batch": args.points_per_batch, "clip_batch": args.clip_batch,
                "amg": dict(amg_settings(args), points_per_side=args.amg_points_per_side)}

        # torch's CPU fp16 matmul is far slower than its fp32 one: no ceiling for anything, so CPU rows all use fp32's.
        gemm_precisions = precisions if device == "cuda" else ["fp32"]
        gemm, error = run_worker({"kind": "gemm", "device": device, "gemm_size": gemm_size, "precisions": gemm_precisions}, work)
        peaks = gemm["peaks"] if gemm else {}
        if error:
            skipped.append(f"GEMM peak: failed ({error}).")

        reference = work / f"outputs-{REFERENCE.tag}.npz"
        results: dict[RowSpec, dict] = {}
        flops: dict[str, float] = {}
        cells: dict[RowSpec, list[list[str]]] = {}
        for row in sorted(rows, key=lambda r: r != REFERENCE):  # the reference first: later rows compare with it
            spec = dict(base, kind=row.kind, precision=row.precision, labels=str(work / f"outputs-{row.tag}.npz"),
                        count_flops=args.flops and row.precision == "fp32" and row.kind in TORCH_KINDS)
            if row.kind == "amg" and args.amg_images:
                spec.update(batches=[1], warmup=0, iters=args.amg_images, count_flops=False)
            model, error = model_for(row, spec, onnx, work)
            result = None
            if model is not None:
                print(f"running {row.pipeline}, {row.precision}", flush=True)
                result, error = run_worker(dict(spec, model=model), work)
            if result is None:
                skipped.append(f"{row.pipeline} {row.precision}: failed ({error}).")
                continue
            results[row] = result
            if result["flops_per_image"] is not None:
                flops[row.kind] = result["flops_per_image"]
            cells[row] = []
            for batch in result["batches"]:
                agreed = agreement(work / f"outputs-{row.tag}.npz", reference, batch)
                cells[row].append(summarise(row, result, batch, flops, peaks, agreed))
                print("  done: " + " | ".join(cells[row][-1]), flush=True)
        table = [line for row in rows if row in cells for line in cells[row]]

    title = f"Exported graph against host-glued pipelines ({args.sam} + {args.clip}, random weights, {device})"
    lines = header(title) + [""] + notes(args, device, skipped, peaks, gemm_size) + table_lines(COLUMNS, table)
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    if table:
        bars = len({tuple(line[:3]) for line in table})
        write_plot(args.out.with_suffix(".png"), draw_throughput(table), title, size=(9, 1.5 + 0.8 * bars))
    print(f"wrote {args.out} in {time.perf_counter() - began:.0f} s", flush=True)
    if len(results) < len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
