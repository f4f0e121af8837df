"""Parity gate: the exported ONNX model in ONNX Runtime (CPU) against the PyTorch graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssprompt.runtime.contract import INPUT, LABELS, MASK_LOGITS, OUTPUTS

__all__ = ["Parity", "THRESHOLDS", "check_parity"]

# precision -> (minimum label agreement, maximum mean |mask-logit error|, maximum max |mask-logit error|)
THRESHOLDS = {"fp32": (0.999, 1e-3, 5e-2), "fp16": (0.98, 5e-2, 2.0)}


@dataclass
class Parity:
    precision: str  # fp32 or fp16
    label_agreement: float  # fraction of pixels with the same label
    mask_mean_error: float  # mean |mask logit ONNX - PyTorch|
    mask_max_error: float  # max |mask logit ONNX - PyTorch|
    images: int  # images compared

    @property
    def passed(self) -> bool:
        min_agree, max_mean, max_max = THRESHOLDS[self.precision]
        return self.label_agreement >= min_agree and self.mask_mean_error <= max_mean and self.mask_max_error <= max_max

    def describe(self) -> str:
        min_agree, max_mean, max_max = THRESHOLDS[self.precision]
        return (
            f"{self.precision} parity on {self.images} images: labels agree on {100 * self.label_agreement:.3f}% "
            f"(need {100 * min_agree:.1f}%), mask logits |err| mean {self.mask_mean_error:.2e} (max allowed {max_mean:.0e}), "
            f"max {self.mask_max_error:.2e} (max allowed {max_max:.0e})"
        )


def check_parity(graph: torch.nn.Module, onnx_path: str | Path, images: np.ndarray, precision: str, batch: int = 2) -> Parity:
    """Run both on `images` (K x S x S x 3 uint8) in batches and compare labels and mask logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree = total = 0
    abs_sum = 0.0
    abs_max = 0.0
    count = 0
    label_index, mask_index = OUTPUTS.index(LABELS), OUTPUTS.index(MASK_LOGITS)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        with torch.no_grad():
            reference = graph(torch.from_numpy(chunk))
        onnx_out = session.run([LABELS, MASK_LOGITS], {INPUT: chunk})
        agree += int((onnx_out[0] == reference[label_index].numpy()).sum())
        total += onnx_out[0].size
        diff = np.abs(onnx_out[1].astype(np.float64) - reference[mask_index].numpy())
        abs_sum += float(diff.sum())
        count += diff.size
        abs_max = max(abs_max, float(diff.max()))
    return Parity(precision, agree / total, abs_sum / count, abs_max, len(images))
