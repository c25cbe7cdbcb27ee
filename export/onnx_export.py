"""ONNX export of the score network's two entry points (docs/architecture.md section 4).

`encode` and `denoise` become two graphs with the dynamic axes G, N, S, L, H, exported with the
dynamo exporter (opset 18: native LayerNormalization). Each file is written atomically. A third,
`denoise_full` (ScoreNet.denoise_full: every token, no cache, no masks; axes G, N, H, L), serves the
steps that compute every token and need no keys/values (the plain sampler); a fourth,
`denoise_full_kv`, is the same step also returning every token's keys/values (the fast sampler's
full steps, whose keys/values its cached steps attend to).

H counts horizon TOKENS, T = horizon / horizon_patch at most: with horizon patches (Ph > 1) a
token is Ph steps, so x_sub's last axis is Ph * Fh and eps_sub's is Ph (docs/model.md section 3).
With Ph = 1 a token is a step and everything is as before.

With context patches (P = context_patch > 1) the context has two lengths: ctx carries L steps
(a multiple of P, exported as the derived dimension P * Lp) and k_ctx/v_ctx carry Lp = L / P
tokens; the graphs' I/O name them "L" and "Lp". With P = 1 both are "L", as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from dil.runtime.support.files import atomic_path
from dil.runtime.manifest import (DENOISE_FULL_INPUTS, DENOISE_FULL_KV_OUTPUTS, DENOISE_FULL_OUTPUTS, DENOISE_INPUTS,
                                  DENOISE_OUTPUTS, ENCODE_INPUTS, ENCODE_OUTPUTS, GRAPHS, OPTIONAL_GRAPHS)
from dil.train.model import ScoreNet

OPSET = 18
# The graphs export_onnx writes, in order: the required ones, then every optional one.
EXPORTED_GRAPHS = GRAPHS + OPTIONAL_GRAPHS


class EncodeGraph(nn.Module):
    """ctx [G, L, Fc] -> k_ctx, v_ctx [layers, G, L/P, D]."""

    def __init__(self, model: ScoreNet):
        super().__init__()
        self.model = model

    def forward(self, ctx):
        return self.model.encode(ctx)


class DenoiseGraph(nn.Module):
    """The denoise entry point with named arguments (torch.export needs them)."""

    def __init__(self, model: ScoreNet):
        super().__init__()
        self.model = model

    def forward(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        return self.model.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid)


class DenoiseFullGraph(nn.Module):
    """The full-step entry point (ScoreNet.denoise_full): x_hor, t_feat, k_ctx, v_ctx -> out, or with
    with_kv -> (out, k_sub, v_sub)."""

    def __init__(self, model: ScoreNet, with_kv: bool = False):
        super().__init__()
        self.model = model
        self.with_kv = with_kv

    def forward(self, x_hor, t_feat, k_ctx, v_ctx):
        return self.model.denoise_full(x_hor, t_feat, k_ctx, v_ctx, with_kv=self.with_kv)


def full_step_inputs(model: ScoreNet, den_args: tuple) -> tuple:
    """denoise_full's tracing inputs from denoise's: x_hor [G, N, T, Ph*Fh] with T = horizon_tokens
    (random), then denoise's t_feat, k_ctx, v_ctx."""
    x_sub, _, t_feat, k_ctx, v_ctx = den_args[:5]
    G, N = x_sub.shape[:2]
    T = model.config.horizon_tokens
    x_hor = torch.randn(G, N, T, x_sub.shape[3], generator=torch.Generator().manual_seed(1))
    return x_hor, t_feat, k_ctx, v_ctx


def example_inputs(model: ScoreNet, G: int = 2, N: int = 3, S: int | None = None, seed: int = 0):
    """Random example inputs for both graphs (float32; pos_sub int64).

    Returns (ctx [G, L, Fc], denoise_args tuple in DENOISE_INPUTS order; x_sub [G, N, S, Ph * Fh]
    holds per step the noisy value and Fh - 1 known features). L (a multiple of P) and the token
    count H = horizon_tokens are the configured maxima; S defaults to `_example_tokens`.
    """
    cfg = model.config
    L, H, D, layers = cfg.context_length, cfg.horizon_tokens, cfg.d_model, cfg.num_layers
    S = _example_tokens(H) if S is None else S
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(G, L, cfg.context_features, generator=g)
    with torch.no_grad():
        k_ctx, v_ctx = model.encode(ctx)
    args = (
        torch.randn(G, N, S, cfg.horizon_patch * cfg.horizon_features, generator=g),
        torch.randint(0, H, (G, N, S), generator=g),
        torch.randn(G, N, cfg.time_embed_dim, generator=g),
        k_ctx,
        v_ctx,
        torch.randn(cfg.num_layers, G, N, H, D, generator=g),
        torch.randn(layers, G, N, H, D, generator=g),
        (torch.rand(G, N, H, generator=g) > 0.5).float(),
    )
    return ctx, args


def _example_tokens(H: int) -> int:
    """S of the tracing inputs: H - 1, so that it differs from H, unless that is 0 or 1 (the exporter
    would fix S at that size: a graph refusing any other S); then H + 1 (a model with 1 or 2
    horizon tokens, e.g. horizon 8 in tokens of 4; the graph allows S > H, pos_sub holds the tokens)."""
    return H - 1 if H > 2 else H + 1


def _dims(model: ScoreNet):
    """(encode, denoise) dynamic shapes for torch.export. The context steps L and the context
    tokens Lp = L / P: one dimension when P = 1; with P > 1, L = P * Lp (a derived dimension, so
    that the exporter knows L divides by P); a model with one context token has them static."""
    cfg = model.config
    P, tokens = cfg.context_patch, cfg.context_tokens
    G, N, S = Dim("G", min=1), Dim("N", min=1), Dim("S", min=1)
    if P == 1:
        L = Lp = Dim("L", min=1, max=cfg.context_length)
    elif tokens > 1:
        Lp = Dim("Lp", min=1, max=tokens)
        L = P * Lp
    else:
        L = Lp = None
    # The horizon tokens T = horizon / Ph; a model with one horizon token has H static, as Lp above.
    H = Dim("H", min=1, max=cfg.horizon_tokens) if cfg.horizon_tokens > 1 else None
    ctx_axes = {0: G} if L is None else {0: G, 1: L}
    kv_axes = {1: G} if Lp is None else {1: G, 2: Lp}
    hor_axes = {1: G, 2: N} if H is None else {1: G, 2: N, 3: H}
    encode = (ctx_axes,)
    full = ({0: G, 1: N} if H is None else {0: G, 1: N, 2: H}, {0: G, 1: N}, kv_axes, kv_axes)
    denoise = (
        {0: G, 1: N, 2: S},
        {0: G, 1: N, 2: S},
        {0: G, 1: N},
        kv_axes,
        kv_axes,
        hor_axes,
        hor_axes,
        {0: G, 1: N} if H is None else {0: G, 1: N, 2: H},
    )
    return encode, denoise, full


# The names of the context axes in the graphs' I/O with P > 1 (the exporter writes "24*Lp" for
# ctx's and an internal symbol for the encode outputs'): (tensor, axis) -> name.
_CONTEXT_AXIS_NAMES = {("ctx", 1): "L", ("k_ctx", 2): "Lp", ("v_ctx", 2): "Lp"}


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress lines and warnings; keep the CLI output ours."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_graph(module: nn.Module, args: tuple, dynamic_shapes, input_names, output_names, path,
                 axis_names: dict | None = None) -> None:
    """Export one graph to `path` atomically (dynamo exporter, opset 18, weights inside the file).

    axis_names: {(I/O tensor, axis): name} given to those dynamic axes of the graph's inputs/outputs.
    """
    with _quiet(), atomic_path(Path(path)) as tmp:
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            external_data=False,
        )
        program.save(str(tmp))
        _strip_source_locations(tmp, axis_names or {})


def _strip_source_locations(path, axis_names: dict) -> None:
    """Drop the per-node metadata the exporter records (each node's Python stack trace and name
    scopes, i.e. file paths of the machine that exported): an artifact must not carry them.
    Also names the I/O axes of `axis_names` ({(tensor, axis): name}, dynamic axes only)."""
    import onnx

    proto = onnx.load(str(path))
    for value in list(proto.graph.input) + list(proto.graph.output):
        for (tensor, axis), name in axis_names.items():
            dims = value.type.tensor_type.shape.dim
            if value.name == tensor and axis < len(dims) and dims[axis].dim_param:
                dims[axis].dim_param = name

    def graphs(graph):
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(proto.graph) for n in g.node] + [n for f in proto.functions for n in f.node]
    for node in nodes:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(proto, str(path))


def export_onnx(model: ScoreNet, out_dir, name: str, progress=None) -> dict[str, Path]:
    """Write NAME.encode.onnx, NAME.denoise.onnx, NAME.denoise_full.onnx and NAME.denoise_full_kv.onnx
    into out_dir; returns {graph: path}.

    progress: optional callable, called with the graph's name before each export (~10 s each).
    """
    model = model.eval()
    out_dir = Path(out_dir)
    ctx, den_args = example_inputs(model)
    enc_dims, den_dims, full_dims = _dims(model)
    paths = {g: out_dir / f"{name}.{g}.onnx" for g in EXPORTED_GRAPHS}
    full_args = full_step_inputs(model, den_args)
    jobs = {
        "encode": (EncodeGraph(model), (ctx,), enc_dims, ENCODE_INPUTS, ENCODE_OUTPUTS),
        "denoise": (DenoiseGraph(model), den_args, den_dims, DENOISE_INPUTS, DENOISE_OUTPUTS),
        "denoise_full": (DenoiseFullGraph(model), full_args, full_dims, DENOISE_FULL_INPUTS, DENOISE_FULL_OUTPUTS),
        "denoise_full_kv": (DenoiseFullGraph(model, with_kv=True), full_args, full_dims, DENOISE_FULL_INPUTS,
                            DENOISE_FULL_KV_OUTPUTS),
    }
    names = _CONTEXT_AXIS_NAMES if model.config.context_patch > 1 else None
    for graph, job in jobs.items():
        if progress is not None:
            progress(graph)
        export_graph(*job, paths[graph], axis_names=names)
    return paths


def dynamic_axes(config) -> dict:
    """The graphs' dynamic axes and their ranges (None: unbounded), as the manifest records them.

    With context patches (P > 1): L (context steps) takes multiples of P ("step": P) and Lp is the
    number of context tokens, L / P. H counts horizon tokens: at most horizon / horizon_patch.
    """
    P = config.context_patch
    axes = {
        "G": {"min": 1, "max": None},
        "N": {"min": 1, "max": None},
        "S": {"min": 1, "max": None},
        "L": {"min": 1, "max": config.context_length},
        "H": {"min": 1, "max": config.horizon_tokens},
    }
    if P > 1:
        axes["L"] = {"min": P, "max": config.context_length, "step": P}
        axes["Lp"] = {"min": 1, "max": config.context_tokens}
    return axes
