"""The score network: a pre-LayerNorm transformer with two entry points (docs/model.md section 3).

A context token is `context_patch` (P) consecutive context steps, their P * Fc features in one
Linear (the graph reshapes [G, L, Fc] -> [G, L/P, P*Fc]); a horizon token is `horizon_patch` (Ph)
consecutive horizon steps, their Ph * Fh inputs (step-major) in one Linear and Ph outputs from the
head. Below, H counts horizon TOKENS (horizon / Ph), as the graphs' H axis does. Block
attention rule: context tokens attend to context tokens only; horizon tokens attend to every token.
So the context's per-layer keys/values do not depend on the noisy horizon and are computed once
per forecast by `encode`, then reused by every `denoise` call.

`denoise` computes a subset of S horizon tokens per row. Each computed token attends to
  (a) its context's keys (one batched matmul per (G, head) over all N*S queries: never copied per
      sample),
  (b) the cached keys of its row's other horizon tokens where hor_valid = 1,
  (c) the fresh keys of the tokens computed in the same call (except padding entries).
pos_sub = H (one past the last horizon position) marks a padding entry: its fresh key is masked out
for every other token and its outputs are meaningless (the caller discards them). This keeps rows
with fewer selected tokens independent of the common S of the call.

Training runs exactly `encode` and `denoise` (a full step: S = H, hor_valid = 0), so the exported
graphs are the trained computation. `denoise_full` is that full step with the same layers, without
masks or cache (and without keys/values out unless asked): the lean graph of the samplers' full steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dil.runtime.model.config import ModelConfig

# Additive attention mask. Finite (not -inf) and within FP16 range so FP16 graphs stay NaN-free.
MASK_VALUE = -1.0e4


class Block(nn.Module):
    """One pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))


class ScoreNet(nn.Module):
    """Denoising network over (context, horizon) tokens. Its output is eps or v as
    config.prediction says (dil.runtime.sampling.parametrisation turns it into x0 and eps).

    encode(ctx [G, L, Fc]) -> k_ctx, v_ctx [layers, G, L/P, D]      (L a multiple of P)
    denoise(x_sub [G, N, S, Ph*Fh], pos_sub i64 [G, N, S], t_feat [G, N, E],
            k_ctx, v_ctx [layers, G, L/P, D], k_hor, v_hor [layers, G, N, T, D], hor_valid [G, N, T])
        -> out_sub [G, N, S, Ph], k_sub, v_sub [layers, G, N, S, D]
    denoise_full(x_hor [G, N, T, Ph*Fh], t_feat, k_ctx, v_ctx) -> out [G, N, T, Ph]   (every token, no cache)
        with_kv=True -> (out, k_sub, v_sub [layers, G, N, T, D])
    T = horizon / Ph horizon tokens; pos_sub is a token index (T marks padding). Token j holds
    steps [j Ph, (j+1) Ph); x_sub holds per step the noisy value then its Fk = Fh - 1 known
    features (step-major, as context patches); out_sub[..., k] is step j Ph + k's eps or v.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        D = config.d_model
        self.num_heads = config.num_heads
        self.head_dim = D // config.num_heads
        P = config.context_patch
        self.ctx_in = nn.Linear(P * config.context_features, D)
        Ph = config.horizon_patch
        self.hor_in = nn.Linear(Ph * config.horizon_features, D)
        self.ctx_pos = nn.Embedding(config.context_length // P, D)
        self.hor_pos = nn.Embedding(config.horizon_tokens, D)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(Block(D, config.ffn_dim) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, Ph)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        for emb in (self.ctx_pos, self.hor_pos):
            nn.init.normal_(emb.weight, std=0.02)

    # ------------------------------------------------------------------------------------------
    def encode(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context keys/values of every layer. ctx: [G, L, Fc] -> ([layers, G, L/P, D], same).

        L is any multiple of P up to context_length; token j holds steps [jP, (j+1)P), its features
        step-major (step 0's Fc values, then step 1's, ...).
        """
        P = self.config.context_patch
        if P > 1:  # -1: L is a dynamic axis of the exported graph
            ctx = ctx.reshape(ctx.shape[0], -1, P * ctx.shape[2])
        G, L = ctx.shape[0], ctx.shape[1]
        Hh, dh = self.num_heads, self.head_dim
        # The last context token always uses the last position embedding: shorter contexts use the
        # tail of the table, so position = distance to the forecast origin.
        pos = torch.arange(L, device=ctx.device) + (self.config.context_length // P - L)
        h = self.ctx_in(ctx) + self.ctx_pos(pos)
        keys, values = [], []
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.qkv(blk.norm1(h)).chunk(3, dim=-1)  # [G, L, D] each
            keys.append(k)
            values.append(v)
            if i == len(self.blocks) - 1:
                break  # the last block's context output is never used, only its keys/values
            qh = q.reshape(G, L, Hh, dh).transpose(1, 2)  # [G, Hh, L, dh]
            kh = k.reshape(G, L, Hh, dh).permute(0, 2, 3, 1)  # [G, Hh, dh, L]
            vh = v.reshape(G, L, Hh, dh).transpose(1, 2)
            p = torch.softmax((qh @ kh) * (1.0 / math.sqrt(dh)), dim=-1)
            h = _block_rest(blk, h, (p @ vh).transpose(1, 2).reshape(G, L, Hh * dh))
        return torch.stack(keys), torch.stack(values)

    # ------------------------------------------------------------------------------------------
    def denoise(
        self,
        x_sub: torch.Tensor,
        pos_sub: torch.Tensor,
        t_feat: torch.Tensor,
        k_ctx: torch.Tensor,
        v_ctx: torch.Tensor,
        k_hor: torch.Tensor,
        v_hor: torch.Tensor,
        hor_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network output (eps or v) and fresh keys/values of the S computed horizon tokens (shapes
        above; H here is the token count T = k_hor.shape[3])."""
        G, N, S = x_sub.shape[0], x_sub.shape[1], x_sub.shape[2]
        L, H = k_ctx.shape[2], k_hor.shape[3]
        Hh, dh = self.num_heads, self.head_dim
        scale = 1.0 / math.sqrt(dh)

        sub_valid = (pos_sub < H).to(x_sub.dtype)  # 0 for padding entries (pos_sub == H)
        pos = torch.clamp(pos_sub, 0, H - 1)
        h = self._horizon_embed(x_sub, pos, t_feat)
        mask_hor = ((1.0 - hor_valid) * MASK_VALUE)[:, :, None, None, :]  # [G, N, 1, 1, H]
        mask_sub = ((1.0 - sub_valid) * MASK_VALUE)[:, :, None, None, :]  # [G, N, 1, 1, S]

        keys, values = [], []
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.qkv(blk.norm1(h)).chunk(3, dim=-1)  # [G, N, S, D] each
            keys.append(k)
            values.append(v)
            qn = q.reshape(G, N, S, Hh, dh).transpose(2, 3)  # [G, N, Hh, S, dh]
            # (a) context: one matmul per (G, head) over all N*S queries.
            q_ctx = qn.permute(0, 2, 1, 3, 4).reshape(G, Hh, N * S, dh)
            k_c = k_ctx[i].reshape(G, L, Hh, dh).permute(0, 2, 3, 1)  # [G, Hh, dh, L]
            v_c = v_ctx[i].reshape(G, L, Hh, dh).transpose(1, 2)  # [G, Hh, L, dh]
            s_ctx = (q_ctx @ k_c).reshape(G, Hh, N, S, L).permute(0, 2, 1, 3, 4) * scale
            # (b) cached horizon tokens of the same row, (c) tokens computed now.
            k_h = k_hor[i].reshape(G, N, H, Hh, dh).permute(0, 1, 3, 4, 2)  # [G, N, Hh, dh, H]
            v_h = v_hor[i].reshape(G, N, H, Hh, dh).transpose(2, 3)  # [G, N, Hh, H, dh]
            k_s = k.reshape(G, N, S, Hh, dh).permute(0, 1, 3, 4, 2)  # [G, N, Hh, dh, S]
            v_s = v.reshape(G, N, S, Hh, dh).transpose(2, 3)  # [G, N, Hh, S, dh]
            s_hor = (qn @ k_h) * scale + mask_hor
            s_sub = (qn @ k_s) * scale + mask_sub
            p = torch.softmax(torch.cat([s_ctx, s_hor, s_sub], dim=-1), dim=-1)
            p_ctx, p_hor, p_sub = p[..., :L], p[..., L : L + H], p[..., L + H :]
            o_ctx = (p_ctx.permute(0, 2, 1, 3, 4).reshape(G, Hh, N * S, L) @ v_c).reshape(G, Hh, N, S, dh)
            o = o_ctx.permute(0, 2, 1, 3, 4) + p_hor @ v_h + p_sub @ v_s  # [G, N, Hh, S, dh]
            h = _block_rest(blk, h, o.transpose(2, 3).reshape(G, N, S, Hh * dh))
        out = self.head(self.norm_out(h))
        return out, torch.stack(keys), torch.stack(values)

    # ------------------------------------------------------------------------------------------
    def denoise_full(self, x_hor: torch.Tensor, t_feat: torch.Tensor, k_ctx: torch.Tensor,
                     v_ctx: torch.Tensor, with_kv: bool = False):
        """The full step of `denoise` (every horizon token computed, no cache) without its masks and
        keys/values: x_hor [G, N, T, Ph*Fh] (token t at position t), t_feat [G, N, E], k_ctx/v_ctx
        [layers, G, L/P, D] -> out [G, N, T, Ph], equal to denoise's out_sub with pos_sub = arange(T)
        and hor_valid = 0 (a masked key's weight is exactly 0 in float32).

        Same layers as `denoise`; only the attention is laid out for the case: each token attends to
        its context's keys and the row's T fresh keys, one key axis of L/P + T per row, so there is
        no mask, no cache input and no key/value output (docs/architecture.md section 4). with_kv:
        also return the tokens' keys/values [layers, G, N, T, D] (each layer's qkv projection,
        sliced), as denoise's k_sub/v_sub: the fast sampler's full steps, whose keys/values its
        cached steps attend to.
        """
        G, N, T = x_hor.shape[0], x_hor.shape[1], x_hor.shape[2]
        layers, L, D = k_ctx.shape[0], k_ctx.shape[2], k_ctx.shape[3]
        Hh, dh = self.num_heads, self.head_dim
        scale = 1.0 / math.sqrt(dh)
        # Rows as one [G N T, D] matrix: each Linear is then one Gemm with its bias fused.
        h = self._horizon_embed(x_hor, torch.arange(T, device=x_hor.device), t_feat).reshape(G * N * T, D)
        # Context keys/values of all layers in head layout [layers, G, 1, Hh, L, dh], shared by the N samples.
        kc, vc = (a.reshape(layers, G, L, Hh, dh).transpose(2, 3).unsqueeze(2) for a in (k_ctx, v_ctx))
        kv_out = []
        for i, blk in enumerate(self.blocks):
            # q, k, v in head layout with one transpose: [3, G, N, Hh, T, dh].
            lin = blk.qkv(blk.norm1(h))
            if with_kv:  # the tokens' keys/values as denoise returns them: [G, N, T, D] each
                kv_out.append(lin.reshape(G, N, T, 3 * D)[..., D:])
            qkv = lin.reshape(G, N, T, 3, Hh, dh).permute(3, 0, 1, 4, 2, 5)
            q, k, v = qkv[0], qkv[1], qkv[2]
            keys = torch.cat([kc[i].expand(G, N, Hh, L, dh), k], dim=3)  # [G, N, Hh, L + T, dh]
            vals = torch.cat([vc[i].expand(G, N, Hh, L, dh), v], dim=3)
            p = torch.softmax((q @ keys.transpose(3, 4)) * scale, dim=-1)  # [G, N, Hh, T, L + T]
            h = _block_rest(blk, h, (p @ vals).transpose(2, 3).reshape(G * N * T, D))
        out = self.head(self.norm_out(h)).reshape(G, N, T, -1)
        if not with_kv:
            return out
        kv = torch.stack(kv_out)  # [layers, G, N, T, 2 D]
        return out, kv[..., :D], kv[..., D:]

    def _horizon_embed(self, x: torch.Tensor, pos: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
        """Horizon tokens' input embedding [G, N, S, D]: inputs x [G, N, S, Ph*Fh], token positions pos
        ([G, N, S] or [S]), diffusion-time features t_feat [G, N, E] (one per row)."""
        return self.hor_in(x) + self.hor_pos(pos) + self.time_mlp(t_feat).unsqueeze(2)

    # ------------------------------------------------------------------------------------------
    def full_step(self, ctx: torch.Tensor, x: torch.Tensor, t_feat: torch.Tensor,
                  hor_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Every horizon token at once (training and the plain reference): out [G, N, H, 1], eps or
        v per config.prediction.

        ctx: [G, L, Fc]; x: noisy horizon values [G, N, H, 1]; t_feat: [G, N, E]; hor_feat: the
        horizon steps' known features [G, H, Fk] (the same for every sample of a series), None only
        for a model without known features (horizon_features == 1).
        """
        G, N, H = x.shape[0], x.shape[1], x.shape[2]
        x_in = self.horizon_tokens(x, hor_feat)
        T = x_in.shape[2]
        k_ctx, v_ctx = self.encode(ctx)
        layers, D = k_ctx.shape[0], k_ctx.shape[3]
        pos = torch.arange(T, device=x.device).expand(G, N, T)
        empty = x.new_zeros(layers, G, N, T, D)
        out, _, _ = self.denoise(x_in, pos, t_feat, k_ctx, v_ctx, empty, empty, x.new_zeros(G, N, T))
        return out.reshape(G, N, H, 1)

    def horizon_tokens(self, x: torch.Tensor, hor_feat: torch.Tensor | None) -> torch.Tensor:
        """The horizon tokens' inputs [G, N, T, Ph * Fh] (step-major) from the noisy values x
        [G, N, H, 1] and the known features hor_feat [G, H, Fk] (None for a model without them)."""
        G, N, H = x.shape[0], x.shape[1], x.shape[2]
        x_in = x
        if hor_feat is not None or self.config.horizon_features > 1:
            x_in = torch.cat([x, horizon_inputs(self.config, hor_feat, G, N, H).to(x.dtype)], dim=-1)
        Ph = self.config.horizon_patch
        return x_in.reshape(G, N, H // Ph, Ph * x_in.shape[-1])  # steps -> tokens, step-major


def _block_rest(blk: Block, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The rest of a block after its attention: h + proj(attn), then the MLP residual."""
    h = h + blk.proj(attn)
    return h + blk.mlp(blk.norm2(h))


def horizon_inputs(config: ModelConfig, hor_feat: torch.Tensor | None, G: int, N: int, H: int) -> torch.Tensor:
    """hor_feat [G, H, Fk] broadcast over the N samples: [G, N, H, Fk]. ValueError (one line) when
    it is missing for a model with known features or its shape is not [G, H, horizon_features - 1]."""
    Fk = config.horizon_features - 1
    if hor_feat is None:
        raise ValueError(f"the model takes {Fk} known features per horizon step: pass hor_feat [G, H, {Fk}]")
    if tuple(hor_feat.shape) != (G, H, Fk):
        raise ValueError(f"hor_feat has shape {list(hor_feat.shape)}, expected [G, H, Fk] = [{G}, {H}, {Fk}]")
    return hor_feat[:, None].expand(G, N, H, Fk)
