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


# --------------------------------------------------------------------------- issue 29 (round three)


def _contract_model(exported: Path, out: Path, labels: str = "int32", shape: tuple = (8, 8), offset: int = 0) -> Path:
    """A hand-made graph carrying the demo model's metadata (input side 8) whose labels output is each pixel's
    largest channel value plus `offset`, of dtype `labels` and declared shape (B, *shape)."""
    from onnx import TensorProto, helper

    source = onnx.load(str(exported), load_external_data=False)
    metadata = {p.key: p.value for p in source.metadata_props}
    metadata[METADATA_PREFIX + "input_size"] = "8"
    kind = {"int32": TensorProto.INT32, "float": TensorProto.FLOAT}[labels]
    nodes = [helper.make_node("ReduceMax", ["images"], ["max"], axes=[3], keepdims=0),
             helper.make_node("Cast", ["max"], ["max32"], to=TensorProto.INT32),
             helper.make_node("Add", ["max32", "offset"], ["shifted"]),
             helper.make_node("Cast", ["shifted"], ["cast"], to=kind),
             helper.make_node("Reshape", ["cast", "shape"], ["labels"])]
    graph = helper.make_graph(
        nodes, "contract", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("labels", kind, ["batch", *shape])],
        [helper.make_tensor("offset", TensorProto.INT32, [], [offset]),
         helper.make_tensor("shape", TensorProto.INT64, [len(shape) + 1], [-1, *shape])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


def _white(path: Path, value: int = 255) -> Path:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_r3_item2_a_graph_whose_outputs_break_the_contract_is_refused_by_name(exported_onnx, tmp_path):
    """Issue 29 item 2: labels of the wrong shape or dtype are refused once, at load; labels outside the classes
    (255 on a 5-class model, negative) at the call that gives them; nothing is written."""
    classes = len(TASK_CLASSES)
    image = _white(tmp_path / "white.png")
    ok = _contract_model(exported_onnx, tmp_path / "ok.onnx")
    code, output = _run(ok, _white(tmp_path / "dark.png", classes - 1), "--out", tmp_path / "fine")
    assert code == 0, output  # the hand-made graph itself keeps the contract on an image within the classes
    cases = {"shape.onnx": ({"shape": (256,)}, "output labels is int32 (B, 256); the contract (and the metadata) say "
                                                "int32 (B, 8, 8)"),
             "float.onnx": ({"labels": "float"}, "output labels is float32 (B, 8, 8); the contract"),
             "high.onnx": ({}, f"output labels holds 255, outside the {classes} classes 0..{classes - 1}"),
             "negative.onnx": ({"offset": -300}, f"output labels holds -45, outside the {classes} classes")}
    for name, (changes, message) in cases.items():
        model = _contract_model(exported_onnx, tmp_path / name, **changes)
        code, output = _run(model, image, "--out", tmp_path / name.replace(".onnx", ""))
        assert code == 1 and "Traceback" not in output, output
        assert f"{model}: {message}" in output
        assert not (tmp_path / name.replace(".onnx", "") / "labels").exists()


def test_r3_item3_bench_refuses_an_unwritable_markdown_path_before_it_runs(exported_onnx, tmp_path):
    """Issue 29 item 3: --markdown under a file is exit 2 before the benchmark; under a missing folder it is made."""
    (tmp_path / "afile").write_text("x")
    args = [str(exported_onnx), "--batch", "1", "--iters", "1", "--warmup", "0", "--quiet"]
    result = CliRunner().invoke(bench_command, [*args, "--markdown", str(tmp_path / "afile" / "b.md")])
    assert result.exit_code == 2 and "afile is not a folder" in result.output and "p50" not in result.output
    result = CliRunner().invoke(bench_command, [*args, "--markdown", str(tmp_path / "new" / "sub" / "b.md")])
    assert result.exit_code == 0, result.output
    assert "p50" in (tmp_path / "new" / "sub" / "b.md").read_text()


@pytest.mark.parametrize("args, refused", [
    (["--task", "instance", "--mask-threshold", "nan"], "'--mask-threshold': 'nan' is not a finite number"),
    (["--task", "instance", "--mask-threshold", "inf"], "'--mask-threshold': 'inf' is not a finite number"),
    (["--task", "instance", "--score-threshold", "1.5"], "'--score-threshold': 1.5 is not in the range 0.0<=x<=1.0"),
    (["--task", "panoptic", "--overlap-threshold", "nan"], "'--overlap-threshold': 'nan' is not a finite number"),
    (["--nms-iou", "2"], "'--nms-iou': 2.0 is not in the range 0.0<=x<=1.0"),
    (["--batch", "0"], "'--batch': 0 is not in the range x>=1"),
])
def test_r3_items8_and_20_ssp_run_refuses_bad_option_values_with_exit_2(tmp_path, args, refused):
    """Issue 29 items 8 and 20: thresholds finite and in range, counts positive; exit 2 before the model loads."""
    code, output = _run(tmp_path / "missing.onnx", tmp_path, "--out", tmp_path / "o", *args)
    assert code == 2 and refused in output


@pytest.mark.parametrize("args, refused", [
    (["--iters", "0"], "'--iters': 0 is not in the range x>=1"),
    (["--warmup", "-1"], "'--warmup': -1 is not in the range x>=0"),
    (["--batch", "1,,2"], "'--batch': '1,,2': expected integers separated by single commas"),
    (["--batch", "0,2"], "'--batch': 0 is not in the range x>=1"),
    (["--batch", "a"], "'--batch': 'a' is not a valid integer"),
])
def test_r3_item20_ssp_bench_refuses_bad_option_values_with_exit_2(tmp_path, args, refused):
    """Issue 29 item 20 (ssp-bench)."""
    result = CliRunner().invoke(bench_command, [str(tmp_path / "missing.onnx"), *args])
    assert result.exit_code == 2 and refused in result.output


def test_r3_item9_a_contract_newer_than_the_runtime_is_refused(exported_onnx, good_image, tmp_path):
    """Issue 29 item 9: contract_version 99."""
    newer = _with_metadata(exported_onnx, tmp_path / "newer.onnx", contract_version=99)
    code, output = _run(newer, good_image, "--out", tmp_path / "o")
    assert code == 1 and f"newer.onnx: metadata contract_version 99 is newer than this runtime reads (up to 2)" in output
    assert not (tmp_path / "o").exists()


def test_r3_item13_an_output_folder_inside_the_input_is_never_read_as_input(exported_onnx, synthetic_root, tmp_path):
    """Issue 29 item 13: `ssp-run M photos --out photos` three times segments the same 2 photos each time, and
    `--out photos/res` likewise; the photos' labels are never replaced by a segmentation of a label map."""
    for photos, out in ((tmp_path / "a", tmp_path / "a"), (tmp_path / "b", tmp_path / "b" / "res")):
        photos.mkdir()
        for source in sorted((synthetic_root / "val" / "images").iterdir())[:2]:
            shutil.copy(source, photos / source.name)
        labels = []
        for _ in range(3):
            code, output = _run(exported_onnx, photos, "--out", out)
            assert code == 0, output
            summary = json.loads((out / "summary.json").read_text())
            assert sorted(Path(r["file"]).parent for r in summary["images"]) == [photos, photos]
            labels.append({r["label"]: (out / r["label"]).read_bytes() for r in summary["images"]})
        assert labels[0] == labels[1] == labels[2]


def test_r3_item14_a_long_input_name_is_segmented_and_temporaries_stay_within_255_bytes(exported_onnx, good_image, tmp_path):
    """Issue 29 item 14: inputs of 221 and 251 characters (the second's label name is cut to fit one path
    component); a temporary's name never passes 255 bytes, however long its file's name."""
    long_names = ["a" * 217 + ".png", "\u00e9" * 123 + "bbbb.png"]  # 221 characters; 251 bytes of UTF-8
    for name in long_names:
        shutil.copy(good_image, tmp_path / name)
    code, output = _run(exported_onnx, *(tmp_path / name for name in long_names), "--out", tmp_path / "o")
    assert code == 0 and "Errno 36" not in output, output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [r["label"] for r in summary["images"]][0] == "labels/" + long_names[0][:-4] + ".png"
    for record in summary["images"]:
        assert len(Path(record["label"]).name.encode()) <= 255 and (tmp_path / "o" / record["label"]).is_file()
    with atomic_path(tmp_path / ("c" * 251 + ".png")) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_bytes(b"x")
    assert (tmp_path / ("c" * 251 + ".png")).read_bytes() == b"x"


def test_r3_item15_an_input_named_twice_gets_two_image_ids(exported_onnx, good_image, tmp_path):
    """Issue 29 item 15: ids 1, 2, ... in input order, one per input given."""
    code, output = _run(exported_onnx, good_image, good_image, "--out", tmp_path / "o", "--task", "instance")
    assert code == 0, output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [r["image_id"] for r in summary["images"]] == [1, 2]
    assert {a["image_id"] for a in json.loads((tmp_path / "o" / "instances.json").read_text())} <= {1, 2}


def test_r3_items14_and_16_a_run_stopped_by_a_full_disk_names_the_file_and_keeps_its_summary_true(
        exported_onnx, synthetic_root, tmp_path, monkeypatch):
    """Issue 29 items 16 and 14: ENOSPC on the third label: the error names that file; summary.json lists the two
    labels already written ("complete": false), and a rerun into the same folder removes what it does not rewrite."""
    import errno

    images = sorted((synthetic_root / "val" / "images").iterdir())[:3]
    writes = {"n": 0}
    real_write = Path.write_bytes

    def write_bytes(self, data):  # the disk fills up at the third file written
        writes["n"] += 1
        if writes["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    out = tmp_path / "o"
    code, output = _run(exported_onnx, *images, "--out", out)
    assert code == 1 and "Traceback" not in output
    assert f"Error: {out / 'labels' / (images[2].stem + '.png')}: cannot write (No space left on device)" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and "No space left on device" in summary["error"]
    assert [r["label"] for r in summary["images"]] == [f"labels/{p.stem}.png" for p in images[:2]]
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{p.stem}.png" for p in images[:2]]
    assert not _temporaries(out)
    monkeypatch.setattr(Path, "write_bytes", real_write)
    code, output = _run(exported_onnx, images[2], "--out", out)
    assert code == 0 and "removed 2 files of the previous run" in output
    assert [p.name for p in (out / "labels").iterdir()] == [f"{images[2].stem}.png"]
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_r3_item17_a_second_run_into_a_locked_output_folder_is_refused(exported_onnx, good_image, tmp_path):
    """Issue 29 item 17 (ssp-run): one run writes an output folder at a time."""
    from ssprompt.runtime.files import LockedError, exclusive

    out = tmp_path / "o"
    with exclusive(out):
        code, output = _run(exported_onnx, good_image, "--out", out)
        assert code == 1 and f"{out}: another ssprompt command is writing this output folder" in output
        with pytest.raises(LockedError):
            with exclusive(out):
                pass
    assert not out.exists() and list(tmp_path.iterdir()) == []  # the lock file went with the lock
    assert _run(exported_onnx, good_image, "--out", out)[0] == 0


def test_r3_item1_a_fifo_among_the_inputs_never_blocks(exported_onnx, good_image, tmp_path):
    """Issue 29 item 1 (ssp-run): a FIFO in an input folder is not listed, one named directly is refused by name."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good_image, folder / "good.png")
    os.mkfifo(folder / "fifo.png")
    assert find_images([folder]) == [folder / "good.png"]
    with pytest.raises(ImageError, match="fifo.png: not a regular file"):
        find_images([folder / "fifo.png"])
    code, output = _run(exported_onnx, folder, "--out", tmp_path / "o")
    assert code == 0, output


def test_r3_item23_a_call_takes_at_most_half_the_available_memory(exported_onnx, synthetic_root, tmp_path, monkeypatch):
    """Issue 29 item 23: --batch 10000 on 4 images runs calls of what the memory measured on the first image
    allows, and says so; the batch never passes the number of images."""
    from ssprompt.runtime import run

    assert run.affordable_batch(10000, 40.0, 1000.0) == 12  # half of 1000 MB at 40 MB an image
    assert run.affordable_batch(8, 40.0, 1e6) == 8 and run.affordable_batch(8, None, 1000.0) == 8
    assert run.affordable_batch(8, 4000.0, 1000.0) == 1
    images = sorted((synthetic_root / "val" / "images").iterdir())[:4]
    monkeypatch.setattr(run, "_probe_cost_mb", lambda call: (call(), 100.0)[1])
    monkeypatch.setattr(run, "_available_mb", lambda: 400.0)  # two images' worth for a call
    calls = []
    real = run._Run.segment
    monkeypatch.setattr(run._Run, "segment", lambda self, chunk, *a: (calls.append(len(chunk)), real(self, chunk, *a)))
    code, output = _run(exported_onnx, *images, "--out", tmp_path / "o", "--batch", "10000")
    assert code == 0, output
    assert "--batch 4: a call would take about 0.4 GB at 100 MB an image" in output and "running 2 images a call" in output
    assert calls == [1, 2, 1]
