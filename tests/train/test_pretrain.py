"""Tests for ssprompt.train.pretrain and the pretrained tiny backbones it ships."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ssprompt.train import backbones as backbones_module
from ssprompt.train.backbones import (TINY_WEIGHT_FILES, BackboneError, build_clip, build_sam, file_sha256,
                                      shipped_tiny_weights, weights_sha256)
from ssprompt.train.pretrain import PretrainConfig, pretrain, pretrain_clip, pretrain_sam
from ssprompt.train.pretrain_eval import crop_accuracy, prompted_iou
from ssprompt.train.world import pretraining_scene

SHORT = PretrainConfig(sam_steps=2, sam_scenes=2, sam_points=2, clip_steps=2, clip_scenes=2)


def test_same_seed_gives_the_same_weights_and_another_seed_others():
    first, _ = pretrain_sam(SHORT, progress=False)
    again, _ = pretrain_sam(SHORT, progress=False)
    other, _ = pretrain_sam(PretrainConfig(**{**SHORT.__dict__, "seed": 1}), progress=False)
    assert weights_sha256(first) == weights_sha256(again) != weights_sha256(other)
    clip, _ = pretrain_clip(SHORT, progress=False)
    clip_again, _ = pretrain_clip(SHORT, progress=False)
    assert weights_sha256(clip) == weights_sha256(clip_again)


def test_pretrain_writes_loadable_weights_and_their_digests(tmp_path):
    record = pretrain(SHORT, tmp_path, progress=False, log=lambda *_: None)
    again = pretrain(SHORT, tmp_path / "again", progress=False, log=lambda *_: None)
    assert [again[n]["sha256"] for n in ("sam", "clip")] == [record[n]["sha256"] for n in ("sam", "clip")]
    assert json.loads((tmp_path / "tiny.json").read_text()) == record
    for name in ("sam", "clip"):
        assert record[name]["sha256"] == file_sha256(tmp_path / TINY_WEIGHT_FILES[name])
    _, digest = build_sam("tiny", tmp_path / TINY_WEIGHT_FILES["sam"])
    assert digest == record["sam"]["sha256"]
    _, _, digest = build_clip("tiny", tmp_path / TINY_WEIGHT_FILES["clip"])
    assert digest == record["clip"]["sha256"]


def test_shipped_weights_are_small_match_their_record_and_load_by_default():
    record = json.loads((shipped_tiny_weights("sam").parent / "tiny.json").read_text())
    for name in ("sam", "clip"):
        path = shipped_tiny_weights(name)
        assert path.stat().st_size <= 10 * 2**20
        assert file_sha256(path) == record[name]["sha256"]
    assert build_sam("tiny")[1] == record["sam"]["sha256"] != build_sam("tiny", random_weights=True)[1]
    assert build_clip("tiny")[2] == record["clip"]["sha256"] != build_clip("tiny", random_weights=True)[2]


def test_damaged_shipped_weights_are_refused_in_one_line(tmp_path, monkeypatch):
    folder = shipped_tiny_weights("sam").parent
    for name in ("tiny.json", TINY_WEIGHT_FILES["sam"]):
        shutil.copy(folder / name, tmp_path / name)
    data = bytearray((tmp_path / TINY_WEIGHT_FILES["sam"]).read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / TINY_WEIGHT_FILES["sam"]).write_bytes(bytes(data))
    monkeypatch.setattr(backbones_module, "_WEIGHTS_DIR", tmp_path)
    with pytest.raises(BackboneError, match="damaged") as err:
        build_sam("tiny")
    assert "\n" not in str(err.value)


def test_the_pretrained_sam_segments_the_thing_a_point_prompts():
    scenes = [pretraining_scene(np.random.default_rng([99, i])) for i in range(4)]
    assert prompted_iou(build_sam("tiny")[0], scenes) > 0.5
    assert prompted_iou(build_sam("tiny", random_weights=True)[0], scenes) < 0.3


def test_the_pretrained_clip_names_a_crop_by_colour_and_shape():
    clip, tokenizer, _ = build_clip("tiny")
    random_clip, random_tokenizer, _ = build_clip("tiny", random_weights=True)
    assert crop_accuracy(clip, tokenizer, np.random.default_rng(7)) >= 0.6  # chance: 1 in 15
    assert crop_accuracy(random_clip, random_tokenizer, np.random.default_rng(7)) <= 0.2
