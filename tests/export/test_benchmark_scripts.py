"""The full-size benchmark scripts run end to end on the tiny config and write well-formed tables."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--sam", "tiny", "--clip", "tiny", "--prompts", "16", "--classes", "3"]


def _table_rows(path: Path) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in path.read_text().splitlines() if line.startswith("| ")]


@pytest.mark.parametrize(
    "script, extra, header",
    [
        ("export_fullsize.py", ["--precisions", "fp32"], "precision"),
        ("runtime_fullsize.py", ["--batch", "1", "--warmup", "0", "--iters", "1"], "batch"),
        ("train_step_memory.py", ["--batch", "1", "--chunk", "4"], "step s"),
    ],
)
def test_benchmark_script_writes_a_table(script, extra, header, tmp_path):
    out = tmp_path / "result.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *TINY, *extra, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_text().startswith("# ") and "Command: `python " in out.read_text()
    rows = _table_rows(out)
    assert rows[0][0] == header and len(rows) == 2  # header and one measurement (the separator starts "|-")
    assert len(rows[1]) == len(rows[0]) and all(rows[1])
