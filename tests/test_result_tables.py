"""Result tables name what was run and nothing of the machine that ran it: no temporary folder, no checkout path."""

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def common():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import common

        yield common
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_the_header_names_no_absolute_path(common, monkeypatch, tmp_path):
    argv = [str(REPO / "benchmarks" / "gpu_profile.py"), str(tmp_path / "fp16" / "model.onnx"), "--work", str(tmp_path),
            f"--cache-dir={tmp_path / 'cache'}", "--lr", "-1", "--out", str(REPO / "benchmarks" / "results" / "x.md")]
    monkeypatch.setattr(sys, "argv", argv)
    command = next(line for line in common.header("title") if line.startswith("Command:"))
    assert command == ("Command: `python benchmarks/gpu_profile.py PATH/fp16/model.onnx --work WORK --cache-dir=CACHE_DIR "
                       "--lr -1 --out benchmarks/results/x.md`  ")


def test_no_committed_result_table_names_a_machine_path():
    named = {path.name: re.findall(r"(?<![\w.])/(?:tmp|work|home|root)/\S*", path.read_text())
             for path in (REPO / "benchmarks" / "results").glob("*.md")}
    assert {name: paths for name, paths in named.items() if paths} == {}
