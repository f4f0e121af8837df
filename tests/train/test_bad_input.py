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
    with pytest.raises(PackError, match=r"nan.pt: learned semantic_embedding holds NaN, infinite or non-float values"):
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
    from ssprompt.train.data import open_folder
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
