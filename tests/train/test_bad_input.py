"""Bad packs, caches and options at training, evaluation and export time (issue 12's campaign)."""

import os
import signal
from dataclasses import replace
import stat
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from ssprompt.export.cli import export_command
from ssprompt.train.cli import eval_command, train_command
from ssprompt.train.pack import PackError, load_pack, save_pack


@pytest.fixture(scope="module")
def pack(demo_run) -> dict:
    return load_pack(demo_run[1])


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_3_a_pack_holding_nan_is_refused_by_name(pack, world_root, tmp_path):
    bad = replace(pack, learned=dict(pack.learned, semantic_embedding=torch.full_like(pack.learned["semantic_embedding"], float("nan"))))
    save_pack(bad, tmp_path / "nan.pt")
    with pytest.raises(PackError, match=r"nan.pt: learned semantic_embedding holds NaN or infinite values"):
        load_pack(tmp_path / "nan.pt")
    for command, args in ((eval_command, ["--data", str(world_root), "--split", "val"]),
                          (export_command, ["--out", str(tmp_path / "o")])):
        result = CliRunner().invoke(command, ["--prompts", str(tmp_path / "nan.pt"), *args])
        assert result.exit_code == 1
        assert "nan.pt: learned semantic_embedding holds NaN" in _one_error_line(result.output)
    assert not (tmp_path / "o").exists()


def test_4_a_pack_of_consistent_but_wrong_semantic_width_is_refused_by_name(pack, world_root, tmp_path):
    def narrow(t):
        return t[..., :32].contiguous()

    save_pack(replace(pack, semantic_prompts=narrow(pack.semantic_prompts), default_semantic=narrow(pack.default_semantic),
                      learned=dict(pack.learned, semantic_embedding=narrow(pack.learned["semantic_embedding"]))),
              tmp_path / "narrow.pt")
    load_pack(tmp_path / "narrow.pt")  # consistent in itself
    for command, args in ((eval_command, ["--data", str(world_root), "--split", "val"]),
                          (export_command, ["--out", str(tmp_path / "o")])):
        result = CliRunner().invoke(command, ["--prompts", str(tmp_path / "narrow.pt"), *args])
        assert result.exit_code == 1
        assert _one_error_line(result.output) == f"Error: {tmp_path / 'narrow.pt'}: semantic prompts are 32 wide; this CLIP embeds in 64"


@pytest.mark.parametrize("palette", [[[300, 0, 0]], [[0, 0]], [[0.5, 1, 2]], [["a", 1, 2]]])
def test_5_a_palette_outside_0_255_is_refused(pack, tmp_path, palette):
    colours = list(pack.palette)
    colours[1:2] = palette
    save_pack(replace(pack, palette=colours), tmp_path / "p.pt")
    with pytest.raises(PackError, match=r"p.pt: palette colour 1 is .*; a colour is three integers in 0\.\.255"):
        load_pack(tmp_path / "p.pt")


def test_11_a_cache_entry_of_the_wrong_shape_is_recomputed(demo_run, tiny_backbones, world_root, tmp_path):
    from ssprompt.train.cache import FeatureCache
    from ssprompt.train.data.layouts import open_folder
    from ssprompt.train.model import SSPrompt
    from ssprompt.train.config import ModelConfig
    from ssprompt.train.features import encode_folder, encoder_identity

    folder = open_folder(world_root, "val")
    model = SSPrompt(tiny_backbones, folder.class_names, ModelConfig(num_prompts=16))
    cache = FeatureCache(tmp_path, encoder_identity(model, tiny_backbones))
    want = encode_folder(model, folder, [0], cache, 0, progress=False)[0][0]
    (entry,) = cache.directory.iterdir()
    torch.save({"sam": torch.zeros(3, 3), "clip": torch.zeros(1), "extent": torch.zeros(2)}, entry)
    fresh = FeatureCache(tmp_path, encoder_identity(model, tiny_backbones))
    got = encode_folder(model, folder, [0], fresh, 0, progress=False)[0][0]
    assert (fresh.hits, fresh.misses) == (0, 1)
    torch.testing.assert_close(got.sam, want.sam)
    assert torch.load(entry, weights_only=True)["sam"].shape == want.sam.shape  # the bad entry was overwritten


def test_14_a_negative_short_side_is_refused(world_root, tmp_path):
    result = CliRunner().invoke(train_command, ["--data", str(world_root), "--out", str(tmp_path / "p.pt"),
                                                "--short-side", "-5"])
    assert result.exit_code == 2 and "'--short-side': -5 is not in the range x>=0" in result.output


def test_6_sigterm_during_an_export_leaves_no_folder_behind(demo_run, tmp_path):
    code = "from ssprompt.export.cli import export_command; export_command()"
    for attempt in range(3):  # an export that finishes between the last look and the signal proves nothing: again
        work = tmp_path / str(attempt)
        work.mkdir()
        process = subprocess.Popen([sys.executable, "-c", code, "--prompts", str(demo_run[1]), "--out", str(work / "m")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".ssprompt-tmp-") for p in work.iterdir()):  # the folder is being filled
            assert process.poll() is None and time.monotonic() < deadline, "the export never started its folder"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            break
    assert process.returncode != 0 and "Traceback" not in stderr
    assert list(work.iterdir()) == []


def test_7_export_folders_follow_the_umask(demo_run, tmp_path):
    from ssprompt.export.pipeline import export_pack

    old = os.umask(0o022)
    try:
        result = export_pack(demo_run[1], tmp_path / "m", parity_gate=False, log=lambda *_: None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.out.stat().st_mode) == 0o755
    assert stat.S_IMODE(result.onnx.stat().st_mode) == 0o644


# --------------------------------------------------------------------------- issue 29 (round three)


def _with_alarm(seconds: int):
    """A hang becomes a test failure (SIGALRM) instead of a CI job that never ends."""
    def fail(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def _small_copy(synthetic_root, tmp_path, count: int = 3):
    """classes.txt and the first `count` images and labels of the synthetic val split, as a flat folder."""
    import shutil

    root = tmp_path / "data"
    for kind in ("images", "labels"):
        (root / kind).mkdir(parents=True)
        for source in sorted((synthetic_root / "val" / kind).iterdir())[:count]:
            shutil.copy(source, root / kind / source.name)
    shutil.copy(synthetic_root / "classes.txt", root / "classes.txt")
    return root


def test_r3_item1_a_fifo_where_a_label_or_image_is_expected_never_blocks(synthetic_root, tmp_path):
    """Issue 29 item 1: a FIFO label is named as no regular file (training and evaluation data); a FIFO image is
    not listed; --calib lists regular files only."""
    from ssprompt.export.pipeline import calibration_images
    from ssprompt.train.data.folder import DataError
    from ssprompt.train.data.layouts import open_folder

    root = _small_copy(synthetic_root, tmp_path)
    label = sorted((root / "labels").iterdir())[1]
    label.unlink()
    os.mkfifo(label)
    _with_alarm(30)
    try:
        with pytest.raises(DataError, match=f"{label}: label is not a regular file"):
            open_folder(root)
        result = CliRunner().invoke(train_command, ["--data", str(root), "--out", str(tmp_path / "p.pt"), "--quiet"])
        assert result.exit_code == 1 and f"{label}: label is not a regular file" in _one_error_line(result.output)
        label.unlink()
        os.mkfifo(root / "images" / "fifo.png")
        os.mkfifo(root / "labels" / "fifo.png")
        (root / "images" / sorted((root / "images").iterdir())[1].name).unlink()
        assert [s.image.name for s in open_folder(root).samples] == [p.name for p in sorted((root / "images").iterdir())
                                                                     if p.is_file()]
        assert calibration_images(16, (0, 0, 0), root / "images").shape == (2, 16, 16, 3)
    finally:
        signal.alarm(0)


def test_r3_item4_packs_of_wrong_dtype_or_untyped_config_are_refused_by_name(pack, world_root, tmp_path):
    """Issue 29 item 4: float64 semantic prompts, model_config.num_prompts "x", model_config.sam ['tiny']: one line
    naming the pack, in load_pack, ssp-eval and ssp-export alike."""
    cases = {"f64.pt": (replace(pack, semantic_prompts=pack.semantic_prompts.double()),
                        "semantic_prompts is float64; expected float32 or float16"),
             "sparse.pt": (replace(pack, grid_points=pack.grid_points.to_sparse()),
                           "grid_points is a torch.sparse_coo tensor, not a dense one"),
             "x.pt": (replace(pack, model_config=dict(pack.model_config, num_prompts="x")),
                      "model_config: num_prompts is str 'x', expected int"),
             "sam.pt": (replace(pack, model_config=dict(pack.model_config, sam=["tiny"])),
                        "model_config: sam is list ['tiny'], expected str"),
             "lr.pt": (replace(pack, train_config=dict(pack.train_config, lr=float("nan"))),
                       "train_config: --lr must be a positive finite number, got nan")}
    for name, (bad, message) in cases.items():
        save_pack(bad, tmp_path / name)
        with pytest.raises(PackError) as refused:
            load_pack(tmp_path / name)
        assert str(refused.value) == f"{tmp_path / name}: {message}"
    for command, args in ((eval_command, ["--data", str(world_root), "--split", "val"]),
                          (export_command, ["--out", str(tmp_path / "o")])):
        for name, (_, message) in cases.items():
            result = CliRunner().invoke(command, ["--prompts", str(tmp_path / name), *args])
            assert result.exit_code == 1
            assert _one_error_line(result.output) == f"Error: {tmp_path / name}: {message}"
    assert not (tmp_path / "o").exists()


def test_r3_item11_packs_with_repeated_class_names_or_no_spatial_prompts_are_refused(pack, tmp_path):
    """Issue 29 item 11: a class name twice; spatial prompts (0, T, E) with matching defaults and grid."""
    names = list(pack.class_names)
    names[1] = names[0]
    save_pack(replace(pack, class_names=names), tmp_path / "twice.pt")
    with pytest.raises(PackError, match=f"twice.pt: class name '{names[0]}' appears more than once"):
        load_pack(tmp_path / "twice.pt")
    empty = pack.spatial_prompts[:0]
    save_pack(replace(pack, spatial_prompts=empty, default_spatial=empty, grid_points=pack.grid_points[:0]),
              tmp_path / "empty.pt")
    with pytest.raises(PackError, match=r"empty.pt: spatial_prompts is empty \(shape \(0, 2, 128\)\)"):
        load_pack(tmp_path / "empty.pt")
    save_pack(replace(pack, spatial_prompts=pack.spatial_prompts[:4], default_spatial=pack.default_spatial[:4],
                      grid_points=pack.grid_points[:4]), tmp_path / "four.pt")
    with pytest.raises(PackError, match=f"four.pt: spatial_prompts holds 4 prompts; model_config.num_prompts says "
                                        f"{pack.spatial_prompts.shape[0]}"):
        load_pack(tmp_path / "four.pt")


@pytest.mark.parametrize("name", ["photo.png", "model.onnx", "empty.pt"])
def test_r3_item21_a_file_that_is_not_a_pack_is_named_as_such(tmp_path, name):
    """Issue 29 item 21: an image or ONNX model passed as --prompts is "not a pack", not "pickled objects"."""
    from PIL import Image

    path = tmp_path / name
    if name.endswith(".png"):
        Image.new("RGB", (4, 4)).save(path)
    else:
        path.write_bytes(b"\x08\x07\x12\x04onnx" if name.endswith(".onnx") else b"")
    result = CliRunner().invoke(export_command, ["--prompts", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert _one_error_line(result.output) == f"Error: {path}: not a pack (not a file written by torch.save)"


@pytest.fixture(scope="module")
def small_setup(tiny_backbones, synthetic_root, tmp_path_factory):
    """A 16-prompt model and the features of one shot a class (as tests/train/test_training.py)."""
    from ssprompt.train.cache import FeatureCache
    from ssprompt.train.config import ModelConfig
    from ssprompt.train.data.layouts import open_folder
    from ssprompt.train.data.sampling import sample_k_shot
    from ssprompt.train.features import encode_folder, encoder_identity
    from ssprompt.train.model import SSPrompt

    folder = open_folder(synthetic_root, "train")
    model = SSPrompt(tiny_backbones, folder.class_names, ModelConfig(num_prompts=16))
    cache = FeatureCache(tmp_path_factory.mktemp("cache"), encoder_identity(model, tiny_backbones))
    return model, encode_folder(model, folder, sample_k_shot(folder, 1), cache, short_side=0, flips=(False,), progress=False)


def _train_config(**kw):
    from ssprompt.train.config import TrainConfig

    return TrainConfig(**{"epochs": 2, "batch_size": 2, "optimizer": "adamw", "lr": 2e-2, "short_side": 0, **kw})


def test_r3_item5_a_damaged_checkpoint_is_not_resumed(small_setup, tmp_path):
    """Issue 29 item 5: no optimizer entry, learnables cut to one row, step -7: each says why and starts afresh."""
    from ssprompt.train.loop import train_prompts

    model, items = small_setup
    ckpt = tmp_path / "run.ckpt"
    train_prompts(model, items, _train_config(checkpoint_every=1), checkpoint_path=ckpt, progress=False)
    good = torch.load(ckpt, weights_only=True)
    name = next(iter(good["learnables"]))
    cases = {"no optimizer state": {k: v for k, v in good.items() if k != "optimizer"},
             f"learnable {name} has shape (1,": dict(good, learnables=dict(good["learnables"], **{
                 name: good["learnables"][name][:1].clone()})),
             "step -7 is not in 0..": dict(good, step=-7),
             f"learnable {name} is float64": dict(good, learnables=dict(good["learnables"], **{
                 name: good["learnables"][name].double()}))}
    for reason, state in cases.items():
        torch.save(state, ckpt)
        notes = []
        result = train_prompts(model, items, _train_config(checkpoint_every=1), checkpoint_path=ckpt, progress=False,
                               log=notes.append)
        assert result.resumed_from == 0 and len(result.losses) == result.steps
        assert len(notes) == 1 and notes[0].startswith(f"{ckpt}: not resumable ({reason}") and "starting afresh" in notes[0]
    torch.save(dict(good, step=1), ckpt)  # a sound one still resumes
    assert train_prompts(model, items, _train_config(checkpoint_every=1), checkpoint_path=ckpt, progress=False).resumed_from == 1


def test_r3_item7_a_diverging_loss_stops_training_before_a_pack_is_written(small_setup, monkeypatch):
    """Issue 29 item 7: --lr nan is exit 2; a loss that turns NaN anyway stops the run (ValueError, exit 1)."""
    from ssprompt.train import loop

    result = CliRunner().invoke(train_command, ["--data", ".", "--out", "p.pt", "--lr", "nan"])
    assert result.exit_code == 2 and "'--lr': 'nan' is not a finite number" in result.output
    model, items = small_setup
    monkeypatch.setattr(loop, "segmentation_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ValueError, match=r"training diverged: loss nan at step 1 of \d+; nothing written"):
        loop.train_prompts(model, items, _train_config(), progress=False)


@pytest.mark.parametrize("args, refused", [
    (["--sam-steps", "0"], "'--sam-steps': 0 is not in the range x>=1"),
    (["--threads", "0"], "'--threads': 0 is not in the range x>=1"),
    (["--clip-steps", "-3"], "'--clip-steps': -3 is not in the range x>=1"),
    (["--seed", "-1"], "'--seed': -1 is not in the range"),
])
def test_r3_item6_ssp_pretrain_refuses_bad_counts_before_it_writes(tmp_path, args, refused):
    """Issue 29 item 6: exit 2, no tiny_sam.pt without its tiny.json."""
    from ssprompt.train.pretrain import pretrain_command

    result = CliRunner().invoke(pretrain_command, ["--out", str(tmp_path / "w"), *args])
    assert result.exit_code == 2 and refused in result.output
    assert not (tmp_path / "w").exists()


def test_r3_item10_classes_txt_with_a_bom_and_odd_thing_markers(tmp_path):
    """Issue 29 item 10: a UTF-8 BOM is not part of the first name; [Thing] and [thing ] mark things; another
    bracketed marker is refused by name."""
    from ssprompt.train.data.classes import read_classes
    from ssprompt.train.data.folder import DataError

    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffbackground\nred disc [Thing]\ngreen square [thing ]\nblue  [ THING]\n".encode("utf-8"))
    assert read_classes(path) == (["background", "red disc", "green square", "blue"], [1, 2, 3])
    path.write_text("background\nred disc [stuff]\n")
    with pytest.raises(DataError, match=r"classes.txt: class 'red disc' ends in the marker \[stuff\]; the one marker is"):
        read_classes(path)


def test_r3_item12_more_than_255_classes_train_on_16_bit_labels(tmp_path):
    """Issue 29 item 12: 300 classes with void 300 (16-bit labels) open and read; void 65536 is refused."""
    import numpy as np
    from PIL import Image

    from ssprompt.train.data.folder import DataError
    from ssprompt.train.data.layouts import open_folder
    from ssprompt.train.data.reading import read_label
    from ssprompt.train.data.sampling import class_presence

    root = tmp_path / "many"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"class {i}\n" for i in range(300)))
    Image.new("RGB", (6, 4)).save(root / "images" / "a.png")
    values = np.array([[0, 299, 300, 7, 7, 7]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(root / "labels" / "a.png")
    folder = open_folder(root, void=300)
    label = read_label(folder.samples[0], folder.num_classes, folder.void)
    assert label.dtype == np.uint16 and label.tolist() == values.tolist()
    assert class_presence(folder, progress=False)[0].nonzero()[0].tolist() == [0, 7, 299]
    with pytest.raises(DataError, match="void 65536 is outside"):
        open_folder(root, void=65536)
    result = CliRunner().invoke(train_command, ["--data", str(root), "--out", str(tmp_path / "p.pt"), "--void", "65536"])
    assert result.exit_code == 2


def test_r3_item17_a_second_ssp_train_on_the_same_pack_is_refused(synthetic_root, tmp_path):
    """Issue 29 item 17: while one run holds the pack, another fails at once (no shared .ckpt); the lock goes
    with its holder."""
    from ssprompt.runtime.files import exclusive

    out = tmp_path / "p.pt"
    args = ["--data", str(synthetic_root), "--split", "train", "--out", str(out), "--quiet"]
    with exclusive(out):
        result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 1
    assert _one_error_line(result.output) == f"Error: {out}: another ssprompt command is writing this pack; wait for it to finish"
    assert list(tmp_path.iterdir()) == []


def test_r3_item18_an_unwritable_weights_plot_is_refused_before_training(synthetic_root, tmp_path):
    """Issue 29 item 18: --weights-plot afile/w.png is exit 2 and no pack is written."""
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(train_command, ["--data", str(synthetic_root), "--split", "train", "--out",
                                                str(tmp_path / "p.pt"), "--weights-plot", str(tmp_path / "afile" / "w.png")])
    assert result.exit_code == 2 and "afile is not a folder" in result.output
    assert not (tmp_path / "p.pt").exists()


def test_r3_item19_ssp_synth_over_a_dataset_of_other_settings_is_refused(tmp_path):
    """Issue 29 item 19: the same settings reuse the dataset; others are refused by name, the old images kept."""
    from ssprompt.train.cli import synth_command

    root = tmp_path / "syn"
    assert CliRunner().invoke(synth_command, [str(root), "--train", "2", "--val", "1"]).exit_code == 0
    assert CliRunner().invoke(synth_command, [str(root), "--train", "2", "--val", "1"]).exit_code == 0
    result = CliRunner().invoke(synth_command, [str(root), "--train", "3", "--val", "1", "--seed", "5"])
    assert result.exit_code == 1
    assert _one_error_line(result.output) == (f"Error: {root}: holds a generated dataset of other settings (n_train 2 "
                                              "(asked 3), seed 0 (asked 5)); remove it or choose another folder")
    assert len(list((root / "train" / "images").iterdir())) == 2


@pytest.mark.parametrize("command, args, refused", [
    ("train", ["--shots", "0"], "'--shots': 0 is not in the range x>=1"),
    ("train", ["--prompts", "7"], "'--prompts': 7 is not a perfect square"),
    ("train", ["--epochs", "0"], "'--epochs': 0 is not in the range x>=1"),
    ("train", ["--batch-size", "-2"], "'--batch-size': -2 is not in the range x>=1"),
    ("train", ["--lr", "-1"], "'--lr': -1.0 is not in the range x>0.0"),
    ("train", ["--weight-decay", "inf"], "'--weight-decay': 'inf' is not a finite number"),
    ("train", ["--void", "70000"], "'--void': 70000 is not in the range 0<=x<=65535"),
    ("train", ["--seed", "-4"], "'--seed': -4 is not in the range"),
    ("eval", ["--void", "-1"], "'--void': -1 is not in the range 0<=x<=65535"),
    ("eval", ["--nms-iou", "nan"], "'--nms-iou': 'nan' is not a finite number"),
    ("synth", ["--train", "0"], "'--train': 0 is not in the range x>=1"),
    ("synth", ["--val", "-1"], "'--val': -1 is not in the range x>=1"),
    ("export", ["--batch", "8:4:1"], "'--batch': --batch '8:4:1': need 1 <= MIN <= OPT <= MAX"),
    ("export", ["--batch", "1:x:2"], "expected MIN:OPT:MAX"),
    ("export", ["--workspace", "-1"], "'--workspace': -1 is not in the range x>=1"),
    ("export", ["--keep-fp32", "NotAnOp"], "'--keep-fp32': not ONNX op types: NotAnOp"),
    ("export", ["--keep-fp32", "softmax"], "not ONNX op types: softmax (did you mean Softmax?)"),
])
def test_r3_items20_and_22_bad_option_values_exit_2(tmp_path, command, args, refused):
    """Issue 29 items 20 and 22: refused while the options are parsed, before any file is read."""
    from ssprompt.train.cli import synth_command

    base = {"train": (train_command, ["--data", str(tmp_path), "--out", str(tmp_path / "p.pt")]),
            "eval": (eval_command, ["--prompts", str(tmp_path / "p.pt"), "--data", str(tmp_path)]),
            "synth": (synth_command, [str(tmp_path / "s")]),
            "export": (export_command, ["--prompts", str(tmp_path / "p.pt"), "--out", str(tmp_path / "o")])}
    cmd, required = base[command]
    result = CliRunner().invoke(cmd, [*required, *args])
    assert result.exit_code == 2 and refused in result.output, result.output


def test_r3_item22_keep_fp32_adds_to_reduce_l2_and_never_drops_it():
    """Issue 29 item 22: --keep-fp32 Softmax keeps ReduceL2 (which overflows FP16) too."""
    from ssprompt.export.cli import _op_types

    assert _op_types("Softmax") == ("ReduceL2", "Softmax")
    assert _op_types("Softmax,ReduceL2, LayerNormalization") == ("ReduceL2", "Softmax", "LayerNormalization")
