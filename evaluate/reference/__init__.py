"""PyTorch reference samplers: the runtime's samplers written again in torch, independently.

They need torch (the `train` extra) but are not training: `dil-validate` checks the runtime
against them, `dil-eval` and `dil-bench` use them as baselines.
"""
