"""Small random score networks with context and horizon patches, shared by the patch tests."""

from __future__ import annotations

from dil.runtime.model.config import ModelConfig


def patch_model(horizon: int, patch: int, known: int = 0, prediction: str = "v", seed: int = 1):
    """A random ScoreNet: context 48 in patches of 12, `horizon` steps in tokens of `patch`, `known`
    known features per step, and a non-zero head (a zero head would make every output 0)."""
    import torch

    from dil.train.model import ScoreNet

    torch.manual_seed(seed)
    config = ModelConfig(context_length=48, horizon=horizon, d_model=16, num_heads=2, num_layers=2, ffn_dim=32,
                         time_embed_dim=8, context_patch=12, horizon_patch=patch, prediction=prediction,
                         context_features=2 + known, horizon_features=1 + known)
    model = ScoreNet(config)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.1)
    return model.eval()
