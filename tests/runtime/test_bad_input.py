"""Bad input and faults at run time (issue 12's campaign): each test is one finding, kept closed."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from ssprompt.runtime.cli import bench_command, run_command
from ssprompt.runtime.contract import METADATA_PREFIX
from ssprompt.train.world import TASK_CLASSES
from ssprompt.runtime.files import TEMPORARY_PREFIX, _host, atomic_path, is_temporary, remove_stale_temporaries
from ssprompt.runtime.images import ImageError, find_images, read_image

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def good_image(synthetic_root) -> Path:
    return sorted((synthetic_root / "val" / "images").iterdir())[0]


def _run(*args) -> tuple:
    result = CliRunner().invoke(run_command, [*map(str, args), "--quiet"])
    return result.exit_code, result.output


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temporary(p)]


def test_1_a_decompression_bomb_is_skipped_and_the_good_images_beside_it_are_segmented(exported_onnx, good_image, tmp_path):
    bomb = tmp_path / "in" / "bomb.png"
    bomb.parent.mkdir()
    Image.new("1", (14000, 14000)).save(bomb, optimize=True)  # 196 million pixels in a small file
    assert bomb.stat().st_size < 200_000
    shutil.copy(good_image, tmp_path / "in" / "good.png")
    code, output = _run(exported_onnx, tmp_path / "in", "--out", tmp_path / "o")
    assert code == 0 and "Traceback" not in output
    assert "bomb.png: cannot read image (more than 179 million pixels, refused as a decompression bomb)" in output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [Path(r["file"]).name for r in summary["images"]] == ["good.png"]


def test_2_stems_that_collide_across_folders_get_distinct_label_files(exported_onnx, good_image, tmp_path):
    for folder, name in (("A", "a.png"), ("B", "a.png"), ("C", "a_1.png")):
        (tmp_path / folder).mkdir()
        shutil.copy(good_image, tmp_path / folder / name)
    code, output = _run(exported_onnx, tmp_path / "A", tmp_path / "B", tmp_path / "C", "--out", tmp_path / "o")
    assert code == 0, output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    labels = {Path(r["file"]).relative_to(tmp_path).as_posix(): r["label"] for r in summary["images"]}
    assert labels == {"A/a.png": "labels/a.png", "B/a.png": "labels/a_2.png", "C/a_1.png": "labels/a_1.png"}
    assert all((tmp_path / "o" / label).is_file() for label in labels.values())


def _with_metadata(model: Path, out: Path, **changes) -> Path:
    """A copy of `model` whose metadata entries `changes` hold these raw JSON-able values."""
    proto = onnx.load(str(model))
    for entry in proto.metadata_props:
        name = entry.key.removeprefix(METADATA_PREFIX)
        if name in changes:
            entry.value = json.dumps(changes[name])
    onnx.save(proto, str(out))
    return out


def test_5_a_palette_out_of_range_is_refused_before_anything_is_written(exported_onnx, good_image, tmp_path):
    classes = len(TASK_CLASSES)  # the demo pack's classes
    bad = _with_metadata(exported_onnx, tmp_path / "bad.onnx", palette=[[300, 0, 0]] * classes)
    code, output = _run(bad, good_image, "--out", tmp_path / "o", "--overlay")
    assert code == 1 and "Traceback" not in output
    assert f"bad.onnx: metadata palette needs {classes} colours of three integers in 0..255" in output
    assert not (tmp_path / "o").exists()


def test_6_a_sigterm_inside_an_atomic_write_leaves_no_temporary(tmp_path):
    code = f"""
import os, signal
from ssprompt.runtime.files import atomic_path, terminate_like_interrupt
terminate_like_interrupt()
with atomic_path({str(tmp_path / 'label.png')!r}) as tmp:
    tmp.write_bytes(b"half a png")
    os.kill(os.getpid(), signal.SIGTERM)
    raise SystemExit("the signal did not interrupt the write")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr and "did not interrupt" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_6_a_temporary_left_by_a_killed_run_is_never_input_and_is_cleaned(exported_onnx, good_image, tmp_path):
    out = tmp_path / "o"
    (out / "labels").mkdir(parents=True)
    stale = out / "labels" / f"{TEMPORARY_PREFIX}999999999@{_host()}-x.png.abc.png"  # a pid that cannot be alive
    stale.write_bytes(b"\x89PNG truncated")
    alive = out / "labels" / f"{TEMPORARY_PREFIX}{os.getpid()}@{_host()}-y.png.abc.png"  # a writer still running
    alive.write_bytes(b"\x89PNG in progress")
    shutil.copy(good_image, out / "labels" / "input.png")
    assert find_images([out]) == [out / "labels" / "input.png"]  # hidden temporaries are not inputs
    code, output = _run(exported_onnx, good_image, "--out", out)
    assert code == 0, output
    assert not stale.exists() and alive.exists()


def test_6_and_12_a_model_that_fails_to_load_leaves_no_folder(good_image, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    code, output = _run(bad, good_image, "--out", tmp_path / "o")
    assert code == 1 and "model.onnx: not a loadable ONNX model" in output
    assert not (tmp_path / "o").exists()


def test_7_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_8_ssp_bench_on_a_foreign_model_is_one_line(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "foreign",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(model))
    result = CliRunner().invoke(bench_command, [str(model), "--batch", "1", "--iters", "1", "--warmup", "0", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output and "KeyError" not in result.output
    assert result.output.strip() == f"Error: {model}: no ssprompt metadata; export it with ssp-export"


def test_9_a_10000_by_1_image_is_segmented_at_its_size(exported_onnx, tmp_path):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, 10000, 3), dtype=np.uint8)).save(strip)
    code, output = _run(exported_onnx, strip, "--out", tmp_path / "o")
    assert code == 0, output
    assert Image.open(tmp_path / "o" / "labels" / "strip.png").size == (10000, 1)


def test_10_when_no_input_can_be_read_the_exit_code_says_so(exported_onnx, tmp_path):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_text("not an image")
    code, output = _run(exported_onnx, tmp_path / "a.png", tmp_path / "b.jpg", "--out", tmp_path / "o")
    assert code == 1 and "none of the 2 input images could be segmented (2 unreadable); nothing written" in output
    assert not (tmp_path / "o" / "summary.json").exists()


def test_15_a_rerun_removes_the_earlier_runs_files_and_says_so(exported_onnx, synthetic_root, tmp_path):
    first, second = sorted((synthetic_root / "val" / "images").iterdir())[:2]
    out = tmp_path / "o"
    assert _run(exported_onnx, first, second, "--out", out, "--overlay")[0] == 0
    (out / "labels" / "mine.png").write_bytes(b"a file of the user's")  # not the earlier run's: left alone
    code, output = _run(exported_onnx, first, "--out", out)
    assert code == 0, output
    # second's label and overlay, and first's overlay (this run writes none): the folder agrees with summary.json
    assert f"removed 3 files of the previous run in {out} that this run did not write" in output
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted([f"{first.stem}.png", "mine.png"])
    assert list((out / "overlays").iterdir()) == []
    assert [r["file"] for r in json.loads((out / "summary.json").read_text())["images"]] == [str(first)]


def test_stale_temporaries_of_dead_writers_on_this_host_only(tmp_path):
    here = _host()
    dead = [f"{TEMPORARY_PREFIX}999999999@{here}-a.png.x.png", f"{TEMPORARY_PREFIX}99999999999999999999@{here}-b.png.x.png"]
    kept = [f"{TEMPORARY_PREFIX}{os.getpid()}@{here}-c.png.x.png",  # this process: alive
            f"{TEMPORARY_PREFIX}999999999@otherhost-d.png.x.png",  # another host's: not ours to judge
            f"{TEMPORARY_PREFIX}\u00b2@{here}-e.png.x.png", "keep.png"]  # a name we never make
    for name in dead + kept:
        (tmp_path / name).write_text("")
    (tmp_path / f"{TEMPORARY_PREFIX}999999999@{here}-model.abc").mkdir()
    assert remove_stale_temporaries(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_corrupt_exif_block_is_an_image_error(good_image, tmp_path):
    image = Image.open(good_image)
    exif = Image.Exif()
    exif[0x0112] = 9  # an orientation that does not exist
    image.save(tmp_path / "odd.jpg", exif=exif)
    result = read_image(tmp_path / "odd.jpg")  # Pillow ignores unknown orientations: read as is
    assert result.shape[2] == 3
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "odd.jpg").read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.jpg: cannot read image"):
        read_image(tmp_path / "cut.jpg")
