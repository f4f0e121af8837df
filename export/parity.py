"""Parity gate: the exported ONNX model in ONNX Runtime against the PyTorch graph it was traced from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssprompt.runtime.contract import CLASS_PROBS, CONFIDENCE, INPUT, LABELS, MASK_LOGITS, OUTPUTS

__all__ = ["Parity", "THRESHOLDS", "check_parity", "compare", "onnx_outputs", "torch_outputs"]

# precision -> (minimum label agreement, maximum mean |mask-logit error|, maximum max |mask-logit error|)
# int8 is gated on its labels alone: quantization moves every logit a little, and what a user sees is the label map.
THRESHOLDS = {"fp32": (0.999, 1e-3, 5e-2), "fp16": (0.99, 5e-2, 2.0), "int8": (0.97, float("inf"), float("inf"))}
COMPARED = (LABELS, CONFIDENCE, MASK_LOGITS, CLASS_PROBS)


@dataclass
class Parity:
    precision: str  # fp32, fp16 or int8
    label_agreement: float  # fraction of pixels with the same label
    mask_mean_error: float  # mean |mask logit ONNX - PyTorch|
    mask_max_error: float  # max |mask logit ONNX - PyTorch|
    confidence_max_error: float  # max |confidence ONNX - PyTorch| (the winning class's probability)
    images: int  # images compared
    provider: str = "CPUExecutionProvider"  # where ONNX Runtime ran the model
    class_probs_max_error: float = 0.0  # max |per-prompt class probability ONNX - PyTorch| (instances; reported, not gated)

    @property
    def passed(self) -> bool:
        min_agree, max_mean, max_max = THRESHOLDS[self.precision]
        return self.label_agreement >= min_agree and self.mask_mean_error <= max_mean and self.mask_max_error <= max_max

    def describe(self) -> str:
        min_agree, max_mean, max_max = THRESHOLDS[self.precision]

        def allowed(limit: float) -> str:
            return "not gated" if limit == float("inf") else f"max allowed {limit:.0e}"

        return (
            f"{self.precision} parity on {self.images} images ({self.provider}): labels agree on "
            f"{100 * self.label_agreement:.3f}% (need {100 * min_agree:.1f}%), mask logits |err| mean "
            f"{self.mask_mean_error:.2e} ({allowed(max_mean)}), max {self.mask_max_error:.2e} ({allowed(max_max)}); "
            f"confidence |err| max {self.confidence_max_error:.2e}, class probabilities |err| max "
            f"{self.class_probs_max_error:.2e}"
        )


def torch_outputs(graph: torch.nn.Module, images: np.ndarray, batch: int = 2) -> dict[str, np.ndarray]:
    """The PyTorch graph's labels, confidence, mask logits and class probabilities on `images` (K x S x S x 3 uint8), in float32
    (TF32 off on a GPU)."""
    device = next(graph.buffers()).device
    parts = []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        parts = _run_torch(graph, images, batch, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {name: np.concatenate([p[name] for p in parts]) for name in COMPARED}


def _run_torch(graph: torch.nn.Module, images: np.ndarray, batch: int, device) -> list[dict[str, np.ndarray]]:
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out = graph(torch.from_numpy(images[start:start + batch]).to(device))
            parts.append({name: out[OUTPUTS.index(name)].cpu().numpy() for name in COMPARED})
    return parts


def onnx_outputs(onnx_path: str | Path, images: np.ndarray, batch: int = 2, provider: str = "cpu") -> tuple[dict, str]:
    """ONNX Runtime's labels, confidence, mask logits and class probabilities on `images`, and the provider that ran.

    float32 on the GPU means float32: TF32 matmuls are switched off for the comparison.
    """
    from ssprompt.runtime.ort_runner import OnnxRuntimeRunner

    parts = []
    with OnnxRuntimeRunner(onnx_path, provider, cuda_options={"use_tf32": "0"}) as runner:
        for start in range(0, len(images), batch):
            parts.append(runner.infer({INPUT: images[start:start + batch]}, list(COMPARED)))
        device = runner.device
    return {name: np.concatenate([p[name] for p in parts]) for name in COMPARED}, device


def compare(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str, provider: str) -> Parity:
    """Label agreement and mask-logit / confidence errors of `ours` against `reference`."""
    masks = np.abs(ours[MASK_LOGITS].astype(np.float64) - reference[MASK_LOGITS])
    confidence = np.abs(ours[CONFIDENCE].astype(np.float64) - reference[CONFIDENCE])
    probs = np.abs(ours[CLASS_PROBS].astype(np.float64) - reference[CLASS_PROBS])
    return Parity(precision, float(np.mean(ours[LABELS] == reference[LABELS])), float(masks.mean()), float(masks.max()),
                  float(confidence.max()), len(reference[LABELS]), provider, float(probs.max()))


def check_parity(graph: torch.nn.Module, onnx_path: str | Path, images: np.ndarray, precision: str,
                 provider: str = "cpu") -> Parity:
    """Run both on `images` (K x S x S x 3 uint8) and compare labels and mask logits."""
    ours, device = onnx_outputs(onnx_path, images, provider=provider)
    return compare(ours, torch_outputs(graph, images), precision, device)
