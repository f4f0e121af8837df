import pytest
import torch

from ssprompt.train.backbones import BackboneError, build_clip, build_sam, file_sha256, weights_sha256
from ssprompt.train.dense_clip import DenseClipEncoder, auto_clip_grid


def test_tiny_builds_are_deterministic_and_frozen(tiny_backbones):
    sam, digest = build_sam("tiny")
    assert digest == tiny_backbones.sam_sha256 and weights_sha256(sam) == weights_sha256(tiny_backbones.sam)
    random_sam, random_digest = build_sam("tiny", random_weights=True)
    assert random_digest == build_sam("tiny", random_weights=True)[1] == weights_sha256(random_sam) != digest
    assert not any(p.requires_grad for p in sam.parameters()) and not sam.training


def test_full_size_sam_without_checkpoint_names_the_file_to_fetch():
    with pytest.raises(BackboneError, match=r"sam_vit_b_01ec64\.pth.*--sam-checkpoint"):
        build_sam("vit_b")


def test_sam_checkpoint_file_is_loaded_and_hashed(tmp_path, tiny_backbones):
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_backbones.sam.state_dict(), path)
    sam, digest = build_sam("tiny", path)
    assert digest == file_sha256(path)
    assert weights_sha256(sam) == weights_sha256(tiny_backbones.sam)


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


def test_dense_clip_features_are_the_last_blocks_value_path(tiny_backbones):
    """MaskCLIP: the last block as CLIP runs it, but with each token attending to itself alone."""
    visual = tiny_backbones.clip.visual
    dense = DenseClipEncoder(visual, visual.grid_size[0])
    images = torch.randn(2, 3, dense.input_size, dense.input_size, generator=torch.Generator().manual_seed(0))
    captured = {}
    last = visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        visual(images)
        hook.remove()
        x = captured["x"]  # the last block's input, as open_clip lays it out
        tokens = x.shape[1] if visual.transformer.batch_first else x.shape[0]
        self_only = torch.full((tokens, tokens), float("-inf")).fill_diagonal_(0.0)
        y = last.ln_1(x)
        x = x + last.ls_1(last.attn(y, y, y, need_weights=False, attn_mask=self_only)[0])
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        if not visual.transformer.batch_first:
            x = x.transpose(0, 1)
        expected = visual.ln_post(x[:, 1:]) @ visual.proj  # (B, g*g, D)
        got = dense(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
