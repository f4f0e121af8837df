import pytest
import torch

from ssprompt.train.config import ModelConfig
from ssprompt.train.model import SSPrompt, labels_from_semantic, mask_class_logits, semantic_map
from ssprompt.train.methods.ssprompt import fuse_prompts

CLASSES = ["background", "red disc", "green square", "blue triangle"]


@pytest.fixture(scope="module")
def model(tiny_backbones):
    return SSPrompt(tiny_backbones, CLASSES, ModelConfig(num_prompts=16, decoder_chunk=5))


@pytest.fixture(scope="module")
def encoded(model):
    images = torch.randint(0, 256, (2, model.image_size, model.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    return model.encode(images)


def test_fuse_prompts_is_paper_equation():
    learned, default = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    logit = torch.tensor([-1.0, 0.0, 2.0])
    fused = fuse_prompts(learned, default, logit)
    for k in range(3):
        w = 1 / (1 + torch.exp(-logit[k]))
        torch.testing.assert_close(fused[k], w * learned[k] + (1 - w) * default[k])


def test_extreme_logits_select_one_side_exactly():
    learned, default = torch.randn(2, 4), torch.randn(2, 4)
    fused = fuse_prompts(learned, default, torch.tensor([1e4, -1e4]))
    assert torch.equal(fused[0], learned[0]) and torch.equal(fused[1], default[1])


def test_fusion_weights_start_at_half_and_learnables_at_defaults(model):
    assert torch.equal(torch.sigmoid(model.prompts.spatial_weight_logit), torch.full((16,), 0.5))
    assert torch.equal(model.spatial_prompts(), model.default_spatial)
    assert torch.equal(model.semantic_prompts(), model.default_semantic)


def test_default_spatial_prompts_decode_like_sam_for_every_grid_point(model, encoded):
    sam_emb, _ = encoded
    sam = model.sam
    with torch.no_grad():
        spatial = fuse_prompts(model.prompts.spatial_embedding + 3.0, model.default_spatial, torch.full((16,), -1e4))
        masks, iou = model.decode(sam_emb, spatial)  # (2, 16, m, m), chunks of 5
        for b in range(2):
            sparse, dense = sam.prompt_encoder(
                points=(model.grid_points[:, None, :], torch.ones(16, 1)), boxes=None, masks=None)
            ref_masks, ref_iou = sam.mask_decoder(
                sam_emb[b:b + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
            torch.testing.assert_close(masks[b], ref_masks[:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[b], ref_iou[:, 0], atol=1e-5, rtol=1e-5)


def test_semantic_map_is_a_distribution_over_classes(model, encoded):
    with torch.no_grad():
        pred = model(*encoded)
    assert pred.semantic.shape == (2, len(CLASSES), model.mask_size, model.mask_size)
    torch.testing.assert_close(pred.semantic.sum(1), torch.ones(2, model.mask_size, model.mask_size))


def test_semantic_map_follows_the_dominant_prompt():
    masks = torch.full((1, 2, 4, 4), -20.0)
    masks[0, 0, :, :2] = 20.0  # prompt 0 covers the left half
    masks[0, 1, :, 2:] = 20.0  # prompt 1 the right half
    logits = torch.tensor([[[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]]])
    labels = semantic_map(masks, torch.ones(1, 2), logits).argmax(1)[0]
    assert (labels[:, :2] == 0).all() and (labels[:, 2:] == 2).all()


def test_mask_class_logits_are_scaled_cosines():
    features = torch.zeros(1, 3, 2, 2)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    features[0, :, 1, 1] = torch.tensor([0.0, 2.0, 0.0])
    masks = torch.full((1, 1, 4, 4), -30.0)
    masks[0, 0, :2, :2] = 30.0  # covers feature cell (0, 0) only
    semantic = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = mask_class_logits(masks, features, semantic, torch.tensor(100.0))
    torch.testing.assert_close(logits[0, 0], torch.tensor([100.0, 0.0]), atol=1e-3, rtol=0)


def test_only_the_four_learnables_require_grad(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"prompts.{name}" for name in model.prompts.learned()}
    assert set(model.prompts.learned()) == {"spatial_embedding", "spatial_weight_logit", "semantic_embedding",
                                            "semantic_weight_logit"}


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"learn": "spatial"}, {"spatial_embedding", "spatial_weight_logit"}),
        ({"learn": "semantic"}, {"semantic_embedding", "semantic_weight_logit"}),
        ({"fixed_weights": True}, {"spatial_embedding", "semantic_embedding"}),
        ({"learn": "spatial", "fixed_weights": True}, {"spatial_embedding"}),
    ],
)
def test_ablation_options_choose_what_learns(tiny_backbones, model, options, expected):
    config = ModelConfig(num_prompts=16, method_options=options)
    ablated = SSPrompt(tiny_backbones, CLASSES, config, default_semantic=model.default_semantic)
    assert {n for n, p in ablated.prompts.learned().items() if p.requires_grad} == expected


def test_the_label_map_is_the_argmax_of_the_upsampled_semantic_map():
    semantic = torch.zeros(1, 3, 2, 2)
    semantic[0, 2, 0, 0] = semantic[0, 1, 1, 1] = 1.0  # top-left class 2, bottom-right class 1, else a tie at 0
    semantic[0, 0] = 0.5
    labels, confidence = labels_from_semantic(semantic, 4)
    assert labels.shape == (1, 4, 4) and labels.dtype == torch.int64
    assert labels[0, 0, 0] == 2 and labels[0, 3, 3] == 1 and labels[0, 0, 3] == 0
    torch.testing.assert_close(confidence[0, 0, 0], torch.tensor(1.0))  # a corner keeps its cell's value


def test_num_prompts_must_be_a_square():
    with pytest.raises(ValueError, match="perfect square"):
        ModelConfig(num_prompts=50)
