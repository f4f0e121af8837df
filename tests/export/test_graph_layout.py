"""The export-only layout (PromptDecoder, EncoderAttention) computes what SAM's own modules compute,
and its graph keeps the batch axis dynamic where SAM pads its attention windows."""

import copy
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from ssprompt.export.encoder_attention import EncoderAttention, swap_encoder_attention
from ssprompt.export.prompt_decoder import PromptDecoder
from ssprompt.train.config import ModelConfig
from ssprompt.train.decoder import decode_masks
from ssprompt.train.model import SSPrompt


@pytest.fixture(scope="module")
def tiny_model(tiny_backbones):
    return SSPrompt(tiny_backbones, ["a", "b", "c"], ModelConfig(num_prompts=16), default_semantic=torch.randn(3, 64)).eval()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("chunk", [16, 5])
def test_prompt_decoder_equals_sams_decoder(tiny_model, chunk, fused):
    model = tiny_model
    generator = torch.Generator().manual_seed(0)
    sparse = model.default_spatial + 0.1 * torch.randn(model.default_spatial.shape, generator=generator)  # not the defaults
    embeddings = torch.randn(3, *model.dense_pe.shape[1:], generator=generator)
    with torch.no_grad():
        want_masks, want_iou = decode_masks(model.sam.mask_decoder, embeddings, model.dense_pe, sparse, model.no_mask_dense)
        decoder = PromptDecoder(model.sam.mask_decoder, model.dense_pe, model.no_mask_dense, sparse, chunk, fused=fused)
        masks, iou = decoder(embeddings)
    assert masks.shape == want_masks.shape == (3, 16, 64, 64)
    torch.testing.assert_close(masks, want_masks, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=1e-5)


def _encoder(window: int) -> nn.Module:
    """A tiny SAM image encoder with trained-looking (small, non-zero) relative positions."""
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=128, qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=window,
                              global_attn_indexes=(1,)).eval()
    for block in encoder.blocks:
        block.attn.rel_pos_h.data.normal_(std=0.02)
        block.attn.rel_pos_w.data.normal_(std=0.02)
    return encoder


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("window", [4, 3])  # 3 does not divide the 16 x 16 grid: SAM pads to 18 x 18
def test_encoder_attention_equals_sams_attention(window, fused):
    encoder = _encoder(window)
    swapped = copy.deepcopy(encoder)
    assert swap_encoder_attention(swapped, query_chunk=100, fused=fused) == 2
    assert all(isinstance(block.attn, EncoderAttention) and block.attn.fused == fused for block in swapped.blocks)
    assert swapped.blocks[1].attn.query_chunk == 100  # global block: 256 queries in 3 chunks
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(swapped(images), encoder(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_clip_attention_equals_open_clips_block(batch_first):
    from open_clip.transformer import ResidualAttentionBlock

    from ssprompt.export.clip_attention import ClipAttention, swap_clip_attention

    torch.manual_seed(0)
    blocks = nn.Sequential(*(ResidualAttentionBlock(64, 4, batch_first=batch_first) for _ in range(3))).eval()
    visual = nn.Module()
    visual.transformer = nn.Module()
    visual.transformer.resblocks = copy.deepcopy(blocks)
    assert swap_clip_attention(visual, 2) == 2
    assert [isinstance(b.attn, ClipAttention) for b in visual.transformer.resblocks] == [True, True, False]
    x = torch.randn(2, 17, 64) if batch_first else torch.randn(17, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(visual.transformer.resblocks(x), blocks(x), atol=1e-5, rtol=1e-5)


def test_graph_with_padded_windows_runs_at_any_batch_size(tiny_backbones):
    """The exporter must keep the batch axis symbolic through SAM's window padding and partitioning."""
    ort = pytest.importorskip("onnxruntime")
    from ssprompt.export.graph import ExportGraph
    from ssprompt.export.onnx_export import export_onnx
    from ssprompt.runtime.contract import BATCH_AXIS, INPUT, LABELS, MASK_LOGITS

    backbones = copy.deepcopy(tiny_backbones)
    backbones.sam.image_encoder = _encoder(window=3)
    model = SSPrompt(backbones, ["a", "b", "c"], ModelConfig(num_prompts=16, decoder_chunk=6), default_semantic=torch.randn(3, 64))
    graph = ExportGraph(model.eval())
    proto = export_onnx(graph).SerializeToString()
    images = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    with torch.no_grad():
        want = graph(torch.from_numpy(images))
    for fixed in (None, 1, 3):
        options = ort.SessionOptions()
        if fixed:
            options.add_free_dimension_override_by_name(BATCH_AXIS, fixed)
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        for batch in ((1, 3) if fixed is None else (fixed,)):
            labels, masks = session.run([LABELS, MASK_LOGITS], {INPUT: images[:batch]})
            np.testing.assert_array_equal(labels, want[0][:batch].numpy())
            np.testing.assert_allclose(masks, want[2][:batch].numpy(), atol=1e-4)


@pytest.mark.parametrize("window", [4, 3])
def test_fused_encoder_attention_traces_to_one_multihead_attention_node_a_block(window):
    """Each block's attention becomes com.microsoft MultiHeadAttention with a query/key head size that is a multiple
    of 8 (D + h + w, zero-padded), and ONNX Runtime computes what SAM's encoder computes."""
    ort = pytest.importorskip("onnxruntime")
    import io
    import warnings

    import onnx

    encoder = _encoder(window)
    swapped = copy.deepcopy(encoder)
    swap_encoder_attention(swapped, query_chunk=100, fused=True)
    images = torch.randn(2, 3, 256, 256)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's and the tracer's, as export/onnx_export.py does
        torch.onnx.export(swapped, (images,), buffer, input_names=["images"], opset_version=17, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    fused = [n for n in model.graph.node if n.domain == "com.microsoft"]
    assert [n.op_type for n in fused] == ["MultiHeadAttention"] * 2
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    for block in swapped.blocks:
        side = block.attn.size[0]
        assert (64 // 2 + 2 * side + block.attn.padding) % 8 == 0 and block.attn.padding < 8  # D = 64 / 2 heads
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = encoder(images).numpy()
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], want, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_encoder_attention_builds_its_extended_keys_without_pad_nodes(fused):
    """The keys' position columns (and the fused queries' zero columns) join in one Concat with a broadcast constant:
    the Pad nodes that built them took 12 % of the H200's node time. Window 4 divides the 16 x 16 token grid, so SAM's
    own window padding adds none either."""
    import io
    import warnings

    import onnx

    swapped = _encoder(4)
    swap_encoder_attention(swapped, query_chunk=100, fused=fused)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's and the tracer's, as export/onnx_export.py does
        torch.onnx.export(swapped, (torch.randn(1, 3, 256, 256),), buffer, input_names=["images"], opset_version=17,
                          dynamo=False)
    ops = [node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node]
    assert "Pad" not in ops and "Concat" in ops
