"""The score network's configuration, shared by training, export and the runtime.

Torch-free so that the runtime can read it from a manifest. The defaults are the first release's
model (epsilon, context 168, one step per token); the shipped model's configuration is its
manifest's (docs/model.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from dil.runtime.model.frequency import check_domain

# What the network may predict (dil.runtime.sampling.parametrisation converts either output into the
# data and noise predictions). Defined here because the runtime's sampling package imports this
# module, not the other way round.
PREDICTIONS = ("epsilon", "v")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and window of a score network (docs/model.md section 3).

    context_length: L, context steps the network sees (168 = one week of hourly data).
    horizon: H, forecast steps (24).
    d_model: D, token width. num_heads: attention heads (D % num_heads == 0). num_layers: blocks.
    ffn_dim: hidden width of each block's MLP. time_embed_dim: E, diffusion-time feature size.
    context_features: Fc, features per context STEP: value, observed mask, then the known features
        and past-only covariates (2 + Fk + Fp).
    horizon_features: Fh, features per horizon token: its noisy value, then its known features (1 + Fk).
    prediction: what the network outputs: "epsilon" (the noise) or "v" (alpha eps - sigma x0);
        docs/model.md section 2.2. Old manifests without the key are epsilon models.
    context_patch: P, context steps per context token (P consecutive steps, P * Fc values, form one
        token); context_length % P == 0. Old manifests without the key have P = 1.
    horizon_patch: Ph, horizon steps per horizon token (Ph consecutive steps, Ph * Fh values in, Ph
        outputs); horizon % Ph == 0. The sampler's controllers, the token cache and the graphs' H axis
        count these tokens (horizon_tokens = horizon / Ph). Old manifests without the key have Ph = 1.
    domain: "time" (horizon tokens are steps) or "frequency" (horizon tokens are the H coordinates of
        the horizon's orthonormal real DFT, dil.runtime.model.frequency; needs horizon >= 2 and Ph = 1;
        docs/frequency.md). Old manifests and runs without the key are time-domain models.
    """

    context_length: int = 168
    horizon: int = 24
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3
    ffn_dim: int = 128
    time_embed_dim: int = 32
    context_features: int = 2
    horizon_features: int = 1
    prediction: str = "epsilon"
    context_patch: int = 1
    horizon_patch: int = 1
    domain: str = "time"

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        for name in ("context_length", "horizon", "d_model", "num_heads", "num_layers", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_embed_dim % 2:
            raise ValueError("time_embed_dim must be even")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        P = self.context_patch
        if not isinstance(P, int) or P < 1 or self.context_length % P:
            raise ValueError(f"context_patch must be an integer >= 1 that divides context_length "
                             f"({self.context_length}), got {self.context_patch!r}")
        Ph = self.horizon_patch
        if not isinstance(Ph, int) or Ph < 1 or self.horizon % Ph:
            raise ValueError(f"horizon_patch must be an integer >= 1 that divides horizon "
                             f"({self.horizon}), got {self.horizon_patch!r}")
        check_domain(self.domain, self.horizon)
        if self.domain == "frequency" and Ph != 1:
            raise ValueError(f"--horizon-patch must be 1 with --domain frequency (one token per spectral "
                             f"coordinate), got {Ph}")
        for name, low in (("context_features", 2), ("horizon_features", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")

    @property
    def context_tokens(self) -> int:
        """Context tokens of a full context: context_length // context_patch."""
        return self.context_length // self.context_patch

    @property
    def horizon_tokens(self) -> int:
        """T, horizon tokens: horizon // horizon_patch."""
        return self.horizon // self.horizon_patch

    @property
    def known_features(self) -> int:
        """Fk, known features per horizon token (horizon_features - 1)."""
        return self.horizon_features - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
