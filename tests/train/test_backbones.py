import pytest
import torch

from ssprompt.train.backbones import BackboneError, build_clip, build_sam, file_sha256, weights_sha256
from ssprompt.train.dense_clip import DenseClipEncoder, auto_clip_grid


def test_tiny_builds_are_deterministic_and_frozen(tiny_backbones):
    sam, digest = build_sam("tiny")
    assert digest == tiny_backbones.sam_sha256 == weights_sha256(tiny_backbones.sam)
    assert not any(p.requires_grad for p in sam.parameters()) and not sam.training


def test_full_size_sam_without_checkpoint_names_the_file_to_fetch():
    with pytest.raises(BackboneError, match=r"sam_vit_b_01ec64\.pth.*--sam-checkpoint"):
        build_sam("vit_b")


def test_sam_checkpoint_file_is_loaded_and_hashed(tmp_path, tiny_backbones):
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_backbones.sam.state_dict(), path)
    sam, digest = build_sam("tiny", path)
    assert digest == file_sha256(path)
    assert weights_sha256(sam) == tiny_backbones.sam_sha256


def test_unreadable_sam_checkpoint_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError) as err:
        build_sam("tiny", path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_uncached_clip_tag_says_what_to_fetch_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # empty caches, whatever this machine has
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(BackboneError, match=r"ViT-B-16/openai.*--clip-pretrained FILE"):
        build_clip("ViT-B-16", "openai")


def test_unknown_clip_tag_lists_the_known_ones():
    with pytest.raises(BackboneError, match="laion2b_s34b_b88k"):
        build_clip("ViT-B-16", "no-such-tag")


def test_auto_clip_grid_is_a_power_of_two_dividing_the_mask():
    assert auto_clip_grid(14, 256) == 32  # ViT-B/16 on SAM's 256x256 masks: 512-pixel CLIP input
    assert auto_clip_grid(8, 64) == 16  # the tiny pair


def test_dense_clip_at_native_grid_keeps_positional_embedding(tiny_backbones):
    visual = tiny_backbones.clip.visual
    dense = DenseClipEncoder(visual, visual.grid_size[0])
    assert torch.equal(dense.pos_embed, visual.positional_embedding)
    out = dense(torch.randn(2, 3, dense.input_size, dense.input_size))
    assert out.shape == (2, visual.proj.shape[1], visual.grid_size[0], visual.grid_size[0])
