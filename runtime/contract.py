"""The exported graph's contract: I/O names, dtypes and metadata keys, in one place.

Export writes graphs to this contract and the runtime reads them by it; neither repeats
these names as literals.
"""

from __future__ import annotations

import json

__all__ = ["INPUT", "OUTPUTS", "BATCH_AXIS", "LABELS", "CONFIDENCE", "MASK_LOGITS", "IOU", "CLASS_IDS", "METADATA_PREFIX", "decode_metadata", "encode_metadata"]

INPUT = "images"  # (B, S, S, 3) uint8, letterboxed RGB
LABELS = "labels"  # (B, S, S) int32 class index per pixel of the square input
CONFIDENCE = "confidence"  # (B, S, S) float32 probability of that class
MASK_LOGITS = "mask_logits"  # (B, N, M, M) float32 per-prompt mask logits (M = S / 4)
IOU = "iou"  # (B, N) float32 per-prompt IoU estimates
CLASS_IDS = "class_ids"  # (B, N) int32 per-prompt class
OUTPUTS = (LABELS, CONFIDENCE, MASK_LOGITS, IOU, CLASS_IDS)
BATCH_AXIS = "batch"  # the one dynamic axis (axis 0 of every input and output); all others are declared static

METADATA_PREFIX = "ssprompt."


def encode_metadata(values: dict) -> dict[str, str]:
    """Plain values → ONNX metadata_props strings (JSON), under the ssprompt. prefix."""
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}


def decode_metadata(props: dict[str, str]) -> dict:
    """ONNX metadata_props (or a sidecar's dict) → plain values, prefix removed.

    Raises:
      ValueError: a value under the prefix that is not JSON (naming its key).
    """
    values = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                values[key[len(METADATA_PREFIX):]] = json.loads(value)
            except (TypeError, ValueError):
                raise ValueError(f"metadata {key} is not JSON") from None
    return values
