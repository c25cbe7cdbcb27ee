"""The score network's configuration, shared by training, export and the runtime.

Torch-free so that the runtime can read it from a manifest. Defaults are the bundled default model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and window of a score network (docs/model.md section 3).

    context_length: L, context steps the network sees (168 = one week of hourly data).
    horizon: H, forecast steps (24).
    d_model: D, token width. num_heads: attention heads (D % num_heads == 0). num_layers: blocks.
    ffn_dim: hidden width of each block's MLP. time_embed_dim: E, diffusion-time feature size.
    context_features: F_in of a context token (value, observed mask).
    horizon_features: features of a horizon token (its noisy value).
    prediction: what the network predicts; "epsilon" (the noise).
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

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        for name in ("context_length", "horizon", "d_model", "num_heads", "num_layers", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_embed_dim % 2:
            raise ValueError("time_embed_dim must be even")
        if self.prediction != "epsilon":
            raise ValueError("only prediction='epsilon' is supported")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
