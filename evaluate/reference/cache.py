"""The token cache of the PyTorch reference of the fast sampler, and its token/step helpers
(docs/sampler.md section 6), written from the specification in torch float64, independently of
dil.runtime.sampling.token_cache.

A horizon token is the model's horizon_patch (Ph) consecutive horizon steps: token t holds steps
[t Ph, (t+1) Ph), and T = H / Ph tokens cover the H steps. The cache keeps the network's keys and
values per token and its outputs per step; the controller reads token values, the MEAN over each
token's Ph steps; the solver reads the step values. With Ph = 1 a token is a step and the token
values are the step values themselves (no arithmetic on them).
"""

from __future__ import annotations

import torch

from dil.runtime.sampling.parametrisation import to_x0_eps


def guard_x0(x0_hat: torch.Tensor, x0_clip) -> torch.Tensor:
    """The data-prediction guard of docs/sampler.md section 2, written again: x0_hat clamped to
    [-x0_clip, x0_clip] (standardised scale); x0_clip = 0 leaves it as it is. x0_clip may be a
    float64 [H] tensor of per-position bounds (a frequency-domain model's, reference.spectral)."""
    if torch.is_tensor(x0_clip):
        return torch.maximum(torch.minimum(x0_hat, x0_clip), -x0_clip)
    return torch.clamp(x0_hat, -x0_clip, x0_clip) if x0_clip else x0_hat


def token_values(steps: torch.Tensor, patch: int) -> torch.Tensor:
    """[..., T * patch] -> [..., T]: the mean of each token's `patch` steps; patch 1: `steps` itself."""
    if patch == 1:
        return steps
    return steps.reshape(*steps.shape[:-1], -1, patch).mean(dim=-1)


def token_steps(tokens: torch.Tensor, patch: int) -> torch.Tensor:
    """[..., T] -> [..., T * patch]: each token's value (a mask, an order, a shift) on each of its steps."""
    return tokens if patch == 1 else tokens.repeat_interleave(patch, dim=-1)


class ReferenceCache:
    """Per row (g, n) and horizon token t, what was last computed for it (torch).

    H: horizon steps; patch: Ph steps per token (H a multiple of it); T = H / Ph.
    k, v: float32 [layers, G, N, T, D]. Per step, float64 [G, N, H]: out (the network's output, eps
    or v per `prediction`), x0_steps and eps (data and noise prediction, what the solver reads),
    x_in_steps (the noisy input of the token's last computation). Per token, float64 [G, N, T]:
    x0_hat (the data prediction the controller reads and may move, see its setter) and x_in (the
    mean of x_in_steps); age int64 [G, N, T], steps since computed; valid bool [G, N, T], computed at
    least once. x0_clip: the guard of every step's x0 it forms (0 = off).
    """

    def __init__(self, layers: int, G: int, N: int, H: int, D: int, x0_clip: float = 0.0,
                 prediction: str = "epsilon", patch: int = 1):
        if patch < 1 or H % patch:
            raise ValueError(f"the horizon {H} is not a positive multiple of the patch {patch}")
        self.x0_clip = x0_clip if torch.is_tensor(x0_clip) else float(x0_clip)
        self.prediction = prediction
        self.patch = int(patch)
        T = H // self.patch
        self.k = torch.zeros((layers, G, N, T, D), dtype=torch.float32)
        self.v = torch.zeros_like(self.k)
        self.x0_steps = torch.zeros((G, N, H), dtype=torch.float64)
        self.out = torch.zeros_like(self.x0_steps)
        self.eps = torch.zeros_like(self.x0_steps)
        self.x_in_steps = torch.zeros_like(self.x0_steps)
        self._x0_tok = token_values(self.x0_steps, self.patch)
        self.age = torch.zeros((G, N, T), dtype=torch.int64)
        self.valid = torch.zeros((G, N, T), dtype=torch.bool)

    @property
    def x0_hat(self) -> torch.Tensor:
        """float64 [G, N, T]: per token, the mean of its steps' x0 (as last stored), or the value a
        controller assigned since."""
        return self.x0_steps if self.patch == 1 else self._x0_tok

    @x0_hat.setter
    def x0_hat(self, tokens: torch.Tensor) -> None:
        """A controller's new token values (core follow): each token's steps move by the change of
        its token value, so that a token's steps keep their shape and their mean follows."""
        if self.patch == 1:
            self.x0_steps = tokens
            return
        self.x0_steps = self.x0_steps + token_steps(tokens - self._x0_tok, self.patch)
        self._x0_tok = tokens

    @property
    def x_in(self) -> torch.Tensor:
        """float64 [G, N, T]: per token, the mean of the noisy input of its last computation."""
        return token_values(self.x_in_steps, self.patch)

    def store(self, computed, pos_sub, x, out_sub, k_sub, v_sub, alpha, sigma) -> None:
        """Scatter one denoise call's outputs to their tokens and refresh the computed tokens' steps.

        computed: bool [G, N, T]; pos_sub: int64 [G, N, S] token indices (T = padding, landing in a
        dropped extra token); x: float64 [G, N, H], the noisy horizon the call saw; out_sub [G, N,
        S, Ph] (step k of an entry = step pos Ph + k); k_sub, v_sub [layers, G, N, S, D]. Per step of
        a computed token: (x0, eps) = to_x0_eps(out, x, alpha, sigma, prediction), x0 clamped to
        [-x0_clip, x0_clip] when the guard is on; then every token's x0_hat is its steps' mean."""
        layers, G, N, T, D = self.k.shape
        Ph = self.patch
        idx = pos_sub[None, ..., None].expand(layers, G, N, pos_sub.shape[-1], D)
        for name, new in (("k", k_sub), ("v", v_sub)):
            full = torch.zeros((layers, G, N, T + 1, D), dtype=new.dtype).scatter(3, idx, new)[:, :, :, :T]
            setattr(self, name, torch.where(computed[None, ..., None], full, getattr(self, name)))
        out_idx = pos_sub[..., None].expand(G, N, pos_sub.shape[-1], Ph)
        out = torch.zeros((G, N, T + 1, Ph), dtype=torch.float64).scatter(2, out_idx, out_sub.double())
        steps = token_steps(computed, Ph)
        self.out = torch.where(steps, out[:, :, :T].reshape(G, N, T * Ph), self.out)
        x0, eps = to_x0_eps(self.out, x, alpha, sigma, self.prediction)
        self.eps = torch.where(steps, eps, self.eps)
        self.x0_steps = torch.where(steps, guard_x0(x0, self.x0_clip), self.x0_steps)
        self._x0_tok = token_values(self.x0_steps, Ph)
        self.x_in_steps = torch.where(steps, x, self.x_in_steps)
        self.age = torch.where(computed, torch.zeros_like(self.age), self.age + 1)
        self.valid = self.valid | computed


def subset_positions(computed: torch.Tensor, bucket: int = 1) -> torch.Tensor:
    """pos_sub int64 [G, N, S]: each row's computed tokens, ascending, then padding entries (T).

    computed: bool [G, N, T]. S = the largest row count rounded up to a multiple of `bucket` (at
    most T), at least 1.
    """
    G, N, T = computed.shape
    need = max(1, int(computed.sum(-1).max()))
    S = min(T, -(-need // bucket) * bucket)
    key = torch.where(computed, torch.arange(T), torch.full_like(computed, T, dtype=torch.int64))
    return torch.sort(key, dim=-1).values[..., :S].contiguous()


def token_inputs(x: torch.Tensor, feat: torch.Tensor | None, pos_sub: torch.Tensor, patch: int) -> torch.Tensor:
    """x_sub float32 [G, N, S, Ph * (1 + Fk)] of the tokens pos_sub [G, N, S]: per token its Ph steps
    in order, each step's noisy value x [G, N, H] then its known features feat [G, H, Fk] (None
    when the model has none); padding entries (pos == T) all zeros."""
    G, N, H = x.shape
    T = H // patch
    per_step = x.to(torch.float32)[..., None]
    if feat is not None:
        per_step = torch.cat([per_step, feat[:, None].expand(G, N, H, feat.shape[-1])], dim=-1)
    width = patch * per_step.shape[-1]
    tokens = torch.cat([per_step.reshape(G, N, T, width), torch.zeros((G, N, 1, width))], dim=2)
    return torch.gather(tokens, 2, pos_sub[..., None].expand(G, N, pos_sub.shape[-1], width))
