"""Export-only: SAM's mask decoder for B images x N constant prompts, arranged for a graph.

Not for direct use: train and evaluate with `ssprompt.train.decoder.decode_masks`, whose
arithmetic this module repeats (tests hold the two equal). What changes is the layout:

- The prompts are constants of the graph, so everything that depends on them alone (the
  first layer's token self-attention, the projections of its queries) is computed here, once.
- The first layer's token-to-image attention reads each image once: its N x T queries attend
  to one copy of the image's keys. The image becomes per-prompt only where SAM's
  image-to-token attention writes to it; SAM's own decoder copies it N times up front.
- Per-prompt attention is re-associated so that, per prompt, only the keys X (P x E) and
  (P x H*T) products are built; a prompt has T tokens and P >> T. With X Wk + bk the keys,
    token-to-image   softmax(q (X Wk + bk)^T) (X Wv + bv) = softmax((q Wk^T) X^T) X Wv + bv
                     (q . bk is one constant a row and drops out of the softmax; its rows sum
                     to 1, so bv passes through), and
    image-to-token   softmax((X Wq + bq) k^T) v Wo = softmax(X (Wq k^T) + bq k^T) (v Wo),
  each head's T tokens side by side (k as a block-diagonal I x H*T matrix). SAM's order builds
  P x I projections of every prompt's keys, their per-head transposes, and a P x I attention
  output that is projected again; this builds none of them.
- Channels-last throughout. The first layer's image projections share one matmul with the
  positional encoding in a constant bias; both transposed convolutions of the upscaling are
  matmuls onto 2 x 2 sub-pixels with their layer norm on the last axis, so no NCHW permute
  touches the B x N-times-larger tensors.
- Prompts decode in groups of `chunk`, so only one group's per-prompt activations are alive.
- With `fused` (`ssp-export --ort-fused`, ONNX Runtime only), the token-to-image attentions are
  ONNX Runtime's MultiHeadAttention (encoder_attention.fused_attention), which holds no logits: the
  first layer's with its 8 heads, the later ones re-associated as above with one head of E channels
  (the heads' T queries side by side: q Wk^T against the keys X, which are also the values), the
  positions' term q (pos Wk)^T as its attention bias.

Shapes: B images, N prompts (n in one group), T tokens a prompt (SAM's output tokens, then
the prompt's Ts sparse tokens), P = h * w image tokens, E channels, I = E / downsample attention
channels, H heads of D = I / H channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .encoder_attention import fused_attention

__all__ = ["PromptDecoder"]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, I) -> (..., H, L, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., H, L, D) -> (..., L, I)."""
    return x.transpose(-3, -2).flatten(-2)


def _attend(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k) v with q already scaled; q (..., H, Lq, D), k_t (..., H, D, Lk), v (..., H, Lk, D)."""
    return (q @ k_t).softmax(dim=-1) @ v


class PromptDecoder(nn.Module):
    """Mask logits and IoU estimates of every (image, prompt) pair; SAM's single-mask output."""

    def __init__(self, decoder: nn.Module, image_pe: torch.Tensor, dense_prompt: torch.Tensor, sparse: torch.Tensor,
                 chunk: int, fused: bool = False) -> None:
        """
        Arguments:
          decoder (nn.Module): segment_anything MaskDecoder (two-layer TwoWayTransformer).
          image_pe (torch.Tensor): (1, E, h, w) dense positional encoding.
          dense_prompt (torch.Tensor): (1, E, h, w) dense prompt (SAM's no-mask embedding).
          sparse (torch.Tensor): (N, Ts, E) sparse prompt tokens, baked in as constants.
          chunk (int): prompts decoded together.
          fused (bool): token-to-image attention through `fused_attention` (module docstring).
        """
        super().__init__()
        transformer = decoder.transformer
        if len(transformer.layers) != 2:
            raise ValueError(f"PromptDecoder follows SAM's two-layer TwoWayTransformer, got {len(transformer.layers)} layers")
        first, second = transformer.layers
        self.heads = transformer.num_heads
        self.chunk = int(chunk)
        self.fused = fused
        self.num_prompts = int(sparse.shape[0])
        h, w = image_pe.shape[-2:]
        self.grid = (int(h), int(w))
        self.layer0 = first
        self.layer1 = second
        self.final = transformer.final_attn_token_to_image
        self.norm_final = transformer.norm_final_attn
        self.iou_head = decoder.iou_prediction_head
        self.hyper = decoder.output_hypernetworks_mlps[0]
        convt1, norm, self.act, convt2, _ = decoder.output_upscaling
        self.upscale_norm_eps = norm.eps

        with torch.no_grad():
            output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)  # (1+M, E)
            tokens = torch.cat([output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)  # (N, T, E)
            pos = image_pe.flatten(2).transpose(1, 2)[0]  # (P, E)
            # Layer 0 self-attention of the constant tokens (no positional encoding in SAM's first layer).
            queries0 = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))  # (N, T, E)
            attn = first.cross_attn_token_to_image
            q0 = _heads(attn.q_proj(queries0 + tokens), self.heads) * self._scale(attn)  # (N, H, T, D)

            self.output_tokens = int(output_tokens.shape[0])
            self.register_buffer("tokens", tokens.clone())
            self.register_buffer("queries0", queries0.clone())
            self.register_buffer("dense", dense_prompt.flatten(2).transpose(1, 2).clone())  # (1, P, E)
            self.register_buffer("q0", q0.transpose(0, 1).flatten(1, 2).clone())  # (H, N*T, D), prompt-major
            # Image-side projections as one matmul each: weight (E, k*I), bias (P, k*I) with the positional term.
            self._register_projection("image0", pos, (attn.k_proj, True), (attn.v_proj, False),
                                      (first.cross_attn_image_to_token.q_proj, True), scale_last=first.cross_attn_image_to_token)
            # Later attentions, per head, for the re-associated products (module docstring).
            heads = self.heads
            for name, attn in (("t2i1", second.cross_attn_token_to_image), ("final", self.final)):
                wk = attn.k_proj.weight.unflatten(0, (heads, -1))  # (H, D, E)
                wv = attn.v_proj.weight.unflatten(0, (heads, -1))
                self.register_buffer(f"{name}_wk", wk.clone())  # (H, D, E)
                self.register_buffer(f"{name}_pos_k", (wk @ pos.t()).clone())  # (H, D, P): the positions' keys
                self.register_buffer(f"{name}_wv", wv.transpose(1, 2).clone())  # (H, E, D)
            for name, attn in (("i2t0", first.cross_attn_image_to_token), ("i2t1", second.cross_attn_image_to_token)):
                self.register_buffer(f"{name}_wo", attn.out_proj.weight.t().unflatten(0, (heads, -1)).clone())  # (H, D, E)
            i2t1 = second.cross_attn_image_to_token
            self.register_buffer("i2t1_wq", i2t1.q_proj.weight.t() * self._scale(i2t1))  # (E, I), attention scale folded in
            self.register_buffer("i2t1_pos_q", i2t1.q_proj(pos) * self._scale(i2t1))  # (P, I): positions' queries, bias
            # head_blocks[h, 0, g, 0] = (h == g): lays each head's token keys on the diagonal of an I x H*T matrix.
            self.register_buffer("head_blocks", torch.eye(heads).view(heads, 1, heads, 1))
            # Transposed convolutions with kernel 2 and stride 2 as matmuls: (in, 2*2*out), columns (a, b, out).
            self.register_buffer("up1_weight", convt1.weight.permute(0, 2, 3, 1).flatten(1).clone())  # (E, 4*E/4)
            self.register_buffer("up1_bias", convt1.bias.repeat(4).clone())
            self.register_buffer("up2_weight", convt2.weight.permute(0, 2, 3, 1).flatten(1).clone())  # (E/4, 4*E/8)
            self.register_buffer("up2_bias", convt2.bias.repeat(4).clone())
            self.register_buffer("up_norm_weight", norm.weight.detach().clone())
            self.register_buffer("up_norm_bias", norm.bias.detach().clone())

    @property
    def sparse_prompts(self) -> torch.Tensor:
        """(N, Ts, E): the sparse prompt tokens baked in (the tokens after SAM's output tokens)."""
        return self.tokens[:, self.output_tokens:]

    @staticmethod
    def _scale(attn: nn.Module) -> float:
        return 1.0 / math.sqrt(attn.internal_dim // attn.num_heads)

    def _register_projection(self, name: str, pos: torch.Tensor, *projections, scale_last: nn.Module | None = None) -> None:
        """Buffers `name`_weight (E, k*I) and `name`_bias (P, k*I): x @ W + b = [proj(x + pos) or proj(x), ...].

        The attention scale of the last projection (a query) is folded into its weight and bias.
        """
        weights, biases = [], []
        for i, (linear, with_pos) in enumerate(projections):
            scale = self._scale(scale_last) if scale_last is not None and i == len(projections) - 1 else 1.0
            weight = linear.weight.t() * scale  # (E, I)
            bias = linear.bias * scale + (pos @ weight if with_pos else 0)  # (P, I) or (I,)
            weights.append(weight)
            biases.append(bias.expand(pos.shape[0], -1))
        self.register_buffer(f"{name}_weight", torch.cat(weights, dim=1).clone())
        self.register_buffer(f"{name}_bias", torch.cat(biases, dim=1).clone())

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image_embeddings (torch.Tensor): (B, E, h, w) SAM image embeddings.

        Returns:
          (torch.Tensor): (B, N, 4h, 4w) mask logits.
          (torch.Tensor): (B, N) IoU estimates.
        """
        keys = image_embeddings.flatten(2).transpose(1, 2) + self.dense  # (B, P, E)
        k0, v0, q_image = (keys @ self.image0_weight + self.image0_bias).chunk(3, dim=-1)  # (B, P, I) each
        if not self.fused:  # fused attention takes them as they are
            k0 = _heads(k0, self.heads).transpose(-1, -2)  # (B, H, D, P)
            v0 = _heads(v0, self.heads)  # (B, H, P, D)
        masks, ious = [], []
        for start in range(0, self.num_prompts, self.chunk):
            group = slice(start, min(start + self.chunk, self.num_prompts))
            m, q = self._decode_group(keys, k0, v0, q_image.unsqueeze(1), group)
            masks.append(m)
            ious.append(q)
        return torch.cat(masks, dim=1), torch.cat(ious, dim=1)

    def _decode_group(self, keys0, k0, v0, q_image, group: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers 0 and 1, the final attention and the upscaling for the prompts in `group`.
        keys0 (B, P, E) and q_image (B, 1, P, I) (scaled, positions added) are each image's, shared by its prompts."""
        layer0, layer1 = self.layer0, self.layer1
        tokens = self.tokens[group]  # (n, T, E)
        n, t = tokens.shape[0], tokens.shape[1]

        # Layer 0, tokens -> image: the group's n*T queries against each image's keys.
        q = self.q0[:, group.start * t:group.stop * t]  # (H, n*T, D)
        if self.fused:  # k0, v0 (B, P, I)
            q = _merge_heads(q).expand(k0.shape[0], -1, -1)  # (B, n*T, I)
            out = fused_attention(q, k0, v0, self.heads, q.shape[1])  # (B, n*T, I)
        else:
            out = _merge_heads(_attend(q, k0, v0))  # (B, n*T, I)
        out = layer0.cross_attn_token_to_image.out_proj(out).unflatten(1, (n, t))  # (B, n, T, E)
        queries = layer0.norm2(self.queries0[group] + out)
        queries = layer0.norm3(queries + layer0.mlp(queries))
        logits = q_image @ self._token_key_blocks(layer0, queries, tokens)  # (B, n, P, H*T)
        keys = self._image_to_token(layer0, keys0.unsqueeze(1), logits, queries, self.i2t0_wo)  # (B, n, P, E)

        # Layer 1.
        q = queries + tokens
        queries = layer1.norm1(queries + self._attention(layer1.self_attn, q, q, queries))
        attn = layer1.cross_attn_token_to_image
        queries = layer1.norm2(queries + self._token_to_image(attn, queries + tokens, keys, self.t2i1_wk, self.t2i1_pos_k,
                                                              self.t2i1_wv))
        queries = layer1.norm3(queries + layer1.mlp(queries))
        blocks = self._token_key_blocks(layer1, queries, tokens)  # (B, n, I, H*T)
        logits = keys @ (self.i2t1_wq @ blocks) + self.i2t1_pos_q @ blocks  # (B, n, P, H*T): (keys + pos) Wq k^T + bq k^T
        keys = self._image_to_token(layer1, keys, logits, queries, self.i2t1_wo)

        # Final attention, tokens -> image.
        out = self._token_to_image(self.final, queries + tokens, keys, self.final_wk, self.final_pos_k, self.final_wv)
        queries = self.norm_final(queries + out)  # (B, n, T, E)

        iou = self.iou_head(queries[:, :, 0])[..., 0]  # (B, n)
        hyper = self.hyper(queries[:, :, 1])  # (B, n, E/8): mask token 0, SAM's single-mask output
        return self._upscale(keys, hyper), iou

    def _attention(self, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SAM's Attention over any leading dims: q (..., Lq, E), k and v (..., Lk, E). Returns (..., Lq, E)."""
        q = _heads(attn.q_proj(q) * self._scale(attn), self.heads)
        out = _attend(q, _heads(attn.k_proj(k), self.heads).transpose(-1, -2), _heads(attn.v_proj(v), self.heads))
        return attn.out_proj(_merge_heads(out))

    def _token_to_image(self, attn: nn.Module, q: torch.Tensor, keys: torch.Tensor, wk: torch.Tensor, pos_k: torch.Tensor,
                        wv: torch.Tensor) -> torch.Tensor:
        """SAM's token-to-image attention, re-associated. q (B, n, T, E) with positions added; keys (B, n, P, E) the
        prompts' keys (positions are added through pos_k); wk (H, D, E), pos_k (H, D, P), wv (H, E, D).
        Returns (B, n, T, E)."""
        q = _heads(attn.q_proj(q) * self._scale(attn), self.heads)  # (B, n, H, T, D)
        # q . (keys + pos) Wk, as (q Wk^T) keys^T + q (pos Wk)^T: the keys are read once and never offset.
        q_keys, pos_logits = (q @ wk).flatten(-3, -2), (q @ pos_k).flatten(-3, -2)  # (B, n, H*T, E), (B, n, H*T, P)
        if self.fused:  # one head of E channels over (B*n) prompts, the positions' logits as the attention bias
            pooled = fused_attention(q_keys.flatten(0, 1), keys.flatten(0, 1), keys.flatten(0, 1), 1, q_keys.shape[-2],
                                     pos_logits.flatten(0, 1).unsqueeze(1))  # (B*n, H*T, E)
            # n as a constant: a size read from the traced tensors was folded to the example's batch.
            pooled = pooled.unflatten(0, (-1, int(q_keys.shape[1])))
        else:
            pooled = (q_keys @ keys.transpose(-1, -2) + pos_logits).softmax(dim=-1) @ keys  # (B, n, H*T, E)
        pooled = pooled.unflatten(-2, (self.heads, -1))  # (B, n, H, T, E)
        return attn.out_proj(_merge_heads(pooled @ wv) + attn.v_proj.bias)

    def _token_key_blocks(self, layer: nn.Module, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The image-to-token attention's token keys as a block-diagonal (B, n, I, H*T) matrix: head h's keys
        in rows h*D..(h+1)*D and columns h*T..(h+1)*T, so q_image @ blocks gives every head's logits at once."""
        k = _heads(layer.cross_attn_image_to_token.k_proj(queries + tokens), self.heads)  # (B, n, H, T, D)
        blocks = k.transpose(-1, -2).unsqueeze(-2) * self.head_blocks  # (B, n, H, D, H, T)
        return blocks.flatten(-4, -3).flatten(-2)  # (B, n, I, H*T)

    def _image_to_token(self, layer: nn.Module, keys: torch.Tensor, logits: torch.Tensor, queries: torch.Tensor,
                        wo: torch.Tensor) -> torch.Tensor:
        """SAM's image-to-token attention and norm4, re-associated. keys (B, 1 or n, P, E); logits (B, n, P, H*T);
        queries (B, n, T, E); wo (H, D, E) the output projection per head. Returns the updated keys (B, n, P, E)."""
        attn = layer.cross_attn_image_to_token
        weights = logits.unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(-2)  # (B, n, P, H*T)
        values = _heads(attn.v_proj(queries), self.heads)  # (B, n, H, T, D)
        out = weights @ (values @ wo).flatten(-3, -2)  # (B, n, P, E): softmax(.) (v Wo)
        # The bias goes on the keys: in layer 0 they are each image's (B, 1, P, E), so it is added once an image.
        return layer.norm4((keys + attn.out_proj.bias) + out)

    def _upscale(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """keys (B, n, P, E), hyper (B, n, E/8) -> mask logits (B, n, 4h, 4w)."""
        h, w = self.grid
        x = (keys @ self.up1_weight + self.up1_bias).unflatten(-1, (4, -1))  # (B, n, P, 4, E/4): sub-pixels (a, b)
        x = F.layer_norm(x, (x.shape[-1],), self.up_norm_weight, self.up_norm_bias, self.upscale_norm_eps)
        x = self.act(x)
        # The bias add stays next to the activation (sub-pixels split after it): ONNX Runtime fuses the two.
        x = self.act(x @ self.up2_weight + self.up2_bias).unflatten(-1, (4, -1))  # (B, n, P, 4, 4, E/8): (a,b), (c,d)
        x = x.flatten(2, 4)  # (B, n, P*16, E/8)
        masks = (x @ hyper.unsqueeze(-1)).squeeze(-1).unflatten(2, (h, w, 2, 2, 2, 2))  # (B, n, i, j, a, b, c, d)
        # Pixel (4i + 2a + c, 4j + 2b + d). Sizes come from the tensor (flatten / unflatten), not from a -1:
        # the exporter keeps the batch axis symbolic only through those.
        return masks.permute(0, 1, 2, 4, 6, 3, 5, 7).flatten(5, 7).flatten(2, 4)
