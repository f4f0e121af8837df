"""benchmarks/runtime_compare.py on the tiny config: a well-formed table, one row per pipeline, honest numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# 8 x 8 AMG points instead of SAM's 32 x 32: the tiny decoder over 3 x 1024 candidates alone takes
# half a minute on two cores; the thresholds and the rest of the pipeline are the same.
TINY = ["--sam", "tiny", "--clip", "tiny", "--prompts", "16", "--classes", "3", "--batch", "1", "--warmup", "0",
        "--iters", "1", "--device", "cpu", "--amg-points-per-side", "8"]
PIPELINES = [
    "ssprompt graph (ONNX Runtime)",
    "ssprompt graph (torch eager)",
    "unfused (torch eager)",
    "SAM automatic mask generator + CLIP on crops (torch eager)",
]
NUMERIC = ["p50 ms", "p99 ms", "images/s", "host peak RSS MB", "GFLOP/image", "achieved GFLOP/s", "% of peak"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[str], list[list[str]]]:
    """(markdown path, header cells, data rows) of one tiny run."""
    out = tmp_path_factory.mktemp("compare") / "compare.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "runtime_compare.py"), *TINY, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in out.read_text().splitlines() if line.startswith("| ")]
    return out, rows[0], rows[1:]


def _by_pipeline(header: list[str], rows: list[list[str]]) -> dict[str, dict[str, str]]:
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_report_has_header_and_one_row_per_pipeline(report):
    out, header, rows = report
    text = out.read_text()
    assert text.startswith("# ") and "Command: `python " in text
    assert header[:4] == ["pipeline", "backend", "precision", "batch"]
    assert header[-2:] == ["label agreement vs graph %", "max abs confidence diff vs graph"]
    assert [row[0] for row in rows] == PIPELINES  # CPU: no TensorRT row, no fp16 rows
    assert all(len(row) == len(header) and all(row) for row in rows)
    assert [(row[2], row[3]) for row in rows] == [("fp32", "1")] * 4
    assert (out.with_suffix(".png")).read_bytes()[:4] == b"\x89PNG"


def test_numbers_parse_and_are_consistent(report):
    _, header, rows = report
    for name, row in _by_pipeline(header, rows).items():
        values = {column: float(row[column]) for column in NUMERIC}
        assert all(v > 0 for v in values.values()), name
        assert row["GPU peak MB"] == "n/a"  # CPU run
        # One timed call of one image: images/s = 1000 / latency, whatever the percentile.
        assert values["images/s"] == pytest.approx(1000 / values["p50 ms"], rel=0.01)
        achieved = values["GFLOP/image"] * values["images/s"]
        assert values["achieved GFLOP/s"] == pytest.approx(achieved, rel=0.1, abs=0.1), name  # rounded cells


def test_unfused_and_runtime_reproduce_the_graph_outputs(report):
    _, header, rows = report
    table = _by_pipeline(header, rows)
    runtime, graph, unfused = (table[name] for name in PIPELINES[:3])
    assert graph["label agreement vs graph %"] == graph["max abs confidence diff vs graph"] == "ref."
    assert float(unfused["label agreement vs graph %"]) >= 99.0
    assert float(runtime["label agreement vs graph %"]) >= 99.0
    # Random maps are often one class everywhere, so labels agree easily; the per-pixel confidence does not:
    # leaving out 4 of the 16 prompts in the unfused glue moves it by ~1e-3, float rounding by ~1e-7.
    assert float(unfused["max abs confidence diff vs graph"]) <= 1e-5
    assert float(runtime["max abs confidence diff vs graph"]) <= 1e-4
    # The runtime runs the very graph that was counted, so it reports the same FLOPs.
    assert runtime["GFLOP/image"] == graph["GFLOP/image"]


def test_mask_generator_keeps_masks_and_says_thresholds_were_relaxed(report):
    out, header, rows = report
    table = _by_pipeline(header, rows)
    kept = float(table[PIPELINES[3]]["masks/image"])
    assert 2 <= kept <= 3 * 8 * 8  # SAM's default thresholds keep none of a random SAM's masks
    assert all(table[name]["masks/image"] == "16.0" for name in PIPELINES[:3])  # the N prompt masks
    # 64 points, 3 masks each, through SAM's decoder cost more than the graph's 16 prompts.
    assert float(table[PIPELINES[3]]["GFLOP/image"]) > float(table[PIPELINES[1]]["GFLOP/image"])
    assert "Relaxed AMG thresholds" in out.read_text()
