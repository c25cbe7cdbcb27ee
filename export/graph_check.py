"""Numerical validation of exported graphs against the PyTorch module (docs/architecture.md section 4; docs/model.md section 7).

For each graph, ONNX Runtime (CPU provider) and the PyTorch module get identical inputs and their
outputs are compared: max abs error and max rel error, on random inputs and on real inputs (context
windows of the checkpoint's training data, noisy horizons at a few diffusion times of the schedule),
at several shapes: S < H, S = H, G = N = 1, L < context_length (a multiple of context_patch),
H < horizon and padding entries (pos_sub == H). H and S count horizon TOKENS (Ph = horizon_patch
steps each; H at most horizon / Ph): the inputs are made per step, then grouped into tokens. A
model's known features and past-only covariates are random inputs in both kinds (real windows
carry only the target). Then the subset equivalence: `denoise` on a subset of tokens, with the
other tokens' cache fresh from a full step and valid, reproduces the full step's rows (each engine
on its own).

Errors are on the standardised scale the network works on (eps and keys/values). The relative error
of an element is |out - ref| / max(|ref|, REL_FLOOR): elements near zero are judged absolutely, so
one tiny reference value cannot make the number meaningless. The gate is the absolute error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from dil.runtime.model.config import ModelConfig
from dil.runtime.manifest import (DENOISE_FULL_INPUTS, DENOISE_FULL_KV_OUTPUTS, DENOISE_FULL_OUTPUTS, DENOISE_INPUTS,
                                  DENOISE_OUTPUTS, ENCODE_INPUTS, ENCODE_OUTPUTS, GRAPHS, OPTIONAL_GRAPHS)
from dil.runtime.inputs.scaling import context_features, context_scale, standardise
from dil.runtime.model.frequency import noise_gains, to_spectrum
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features
from dil.train.model import ScoreNet

FP32_TOLERANCE = 1e-4  # max abs error of a float32 graph vs torch (standardised scale)
SUBSET_TOLERANCE = 1e-5  # max abs error of a subset step vs the full step's rows (float32)
REL_FLOOR = 1e-2  # denominator floor of the relative error
PROVIDER = "CPUExecutionProvider"
REAL_WINDOWS = 4  # distinct real context windows (G of the largest real shape)
REAL_TIMES = 5  # diffusion times of the real noisy horizons (from the sampling grid)


@dataclass(frozen=True)
class Shape:
    """One validation shape: G contexts, N rows each, S computed tokens, context L steps (a
    multiple of context_patch), horizon H tokens (H * horizon_patch steps).

    pad: some rows carry padding entries (pos_sub == H) in place of their last tokens.
    """

    G: int
    N: int
    S: int
    L: int
    H: int
    pad: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def validation_shapes(config: ModelConfig) -> list[Shape]:
    """The shapes every export is checked at (distinct; all within the graphs' dynamic ranges)."""
    L, H, P = config.context_length, config.horizon_tokens, config.context_patch
    half_h, half_l = max(1, H // 2), max(P, (L // 2) // P * P)  # context lengths are multiples of P
    # A padded row needs S >= 2: with 2 or 3 horizon tokens (H // 2 == 1) that shape takes S = 2.
    pad_s = half_h if half_h > 1 else min(2, H)
    shapes = [
        Shape(2, 3, pad_s, L, H, pad=True),  # S < H (S = H with 2 tokens) with padding
        Shape(2, 2, H, L, H),  # S = H: a full step
        Shape(1, 1, 1, L, H),  # G = N = S = 1
        Shape(3, 2, max(1, H // 3), half_l, H),  # L < context_length
        Shape(2, 2, max(1, half_h // 2), L, half_h, pad=True),  # H < horizon (when H > 1), padding
    ]
    return list(dict.fromkeys(shapes))


# ---------------------------------------------------------------------------------------------
# The two engines behind one NumPy interface.
class OrtGraphs:
    """The exported graphs in ONNX Runtime (CPU provider). Arrays in, arrays out."""

    def __init__(self, paths: dict):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {
            g: ort.InferenceSession(str(paths[g]), opts, providers=[PROVIDER])
            for g in GRAPHS + OPTIONAL_GRAPHS if g in paths
        }

    def encode(self, ctx):
        return tuple(self.sessions["encode"].run(list(ENCODE_OUTPUTS), {ENCODE_INPUTS[0]: ctx}))

    def denoise(self, *args):
        return tuple(self.sessions["denoise"].run(list(DENOISE_OUTPUTS), dict(zip(DENOISE_INPUTS, args))))

    def denoise_full(self, *args):
        return self.sessions["denoise_full"].run(list(DENOISE_FULL_OUTPUTS), dict(zip(DENOISE_FULL_INPUTS, args)))[0]

    def denoise_full_kv(self, *args):
        return tuple(self.sessions["denoise_full_kv"].run(list(DENOISE_FULL_KV_OUTPUTS),
                                                          dict(zip(DENOISE_FULL_INPUTS, args))))


class TorchGraphs:
    """The PyTorch module with the same interface as OrtGraphs (float32 CPU, no grad)."""

    def __init__(self, model: ScoreNet):
        self.model = model.eval()

    @torch.no_grad()
    def encode(self, ctx):
        return tuple(t.numpy() for t in self.model.encode(torch.from_numpy(ctx)))

    @torch.no_grad()
    def denoise(self, *args):
        return tuple(t.numpy() for t in self.model.denoise(*(torch.from_numpy(a) for a in args)))

    @torch.no_grad()
    def denoise_full(self, *args):
        return self.model.denoise_full(*(torch.from_numpy(a) for a in args)).numpy()

    @torch.no_grad()
    def denoise_full_kv(self, *args):
        return tuple(t.numpy() for t in self.model.denoise_full(*(torch.from_numpy(a) for a in args), with_kv=True))


def errors(outputs, references) -> tuple[float, float]:
    """(max abs error, max rel error) over every element of paired output arrays."""
    abs_err, rel_err = 0.0, 0.0
    for out, ref in zip(outputs, references):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape:
            raise ValueError(f"output shape {out.shape} differs from the reference's {ref.shape}")
        diff = np.abs(out - ref)
        if diff.size:
            abs_err = max(abs_err, float(diff.max()))
            rel_err = max(rel_err, float((diff / np.maximum(np.abs(ref), REL_FLOOR)).max()))
    return abs_err, rel_err


# ---------------------------------------------------------------------------------------------
# Inputs.
@dataclass
class Case:
    """The inputs of one check: ctx f32 [G, L, Fc] (network features); x the horizon tokens' inputs
    f32 [G, N, H, Ph * Fh] (per step of the token: noisy value, then known features); t_feat f32
    [G, N, E]. kind: "random" or "real"."""

    ctx: np.ndarray
    x: np.ndarray
    t_feat: np.ndarray
    shape: Shape
    kind: str


def subset_positions(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Distinct ascending horizon positions per row, int64 [G, N, S]; with shape.pad, rows keep a
    random count 1..S of them and the rest are padding entries (== H). Needs S <= H."""
    G, N, S, H = shape.G, shape.N, shape.S, shape.H
    pos = np.sort(np.argsort(rng.random((G, N, H)), axis=-1)[..., :S], axis=-1)
    if shape.pad:
        keep = rng.integers(1, S + 1, size=(G, N, 1))
        keep[0, 0, 0] = max(1, S - 1)  # at least one padded entry whenever S > 1
        pos = np.where(np.arange(S) < keep, pos, H)
    return pos.astype(np.int64)


def _time_features(kappa: np.ndarray, dim: int) -> np.ndarray:
    return diffusion_time_features(kappa, dim).astype(np.float32)


def _with_features(config: ModelConfig, ctx: np.ndarray, x: np.ndarray, rng: np.random.Generator):
    """(ctx [G, L, Fc], x [G, N, T, Ph * Fh]) from (value, mask) ctx [G, L, 2] and the noisy values
    of the horizon steps x [G, N, T * Ph, 1]: random known features and past-only covariates
    appended, uniform in [-1, 1] (the horizon's known features are a series' own, the same for all
    its samples), then the steps grouped into tokens of Ph steps, step-major (as the model's
    full_step does)."""
    G, L = ctx.shape[:2]
    N, steps = x.shape[1:3]
    extra, Fk, Ph = config.context_features - 2, config.horizon_features - 1, config.horizon_patch
    ctx = np.concatenate([ctx, rng.uniform(-1, 1, (G, L, extra)).astype(np.float32)], axis=-1)
    feat = np.broadcast_to(rng.uniform(-1, 1, (G, 1, steps, Fk)), (G, N, steps, Fk))
    x = np.concatenate([x, feat.astype(np.float32)], axis=-1)
    return ctx, x.reshape(G, N, steps // Ph, Ph * config.horizon_features)


def random_case(config: ModelConfig, schedule: NoiseSchedule, shape: Shape, rng: np.random.Generator) -> Case:
    """Standard-normal context values (random observed mask) and noisy horizon (shape.H tokens of
    horizon_patch steps); random times and features."""
    G, N, L, H = shape.G, shape.N, shape.L, shape.H * config.horizon_patch
    z = rng.standard_normal((G, L))
    z[rng.random((G, L)) < 0.1] = np.nan  # missing context values, as in real data
    z[:, -1] = rng.standard_normal(G)  # keep every window scalable
    x = rng.standard_normal((G, N, H, 1)).astype(np.float32)
    kappa = rng.uniform(0.0, schedule.num_steps - 1, size=(G, N))
    ctx, x = _with_features(config, context_features(z), x, rng)
    return Case(ctx, x, _time_features(kappa, config.time_embed_dim), shape, "random")


def real_case(config: ModelConfig, schedule: NoiseSchedule, shape: Shape, windows, rng: np.random.Generator) -> Case:
    """Real context windows (their last shape.L steps, standardised as the runtime does) and their
    real targets (the first shape.H tokens' steps) noised at REAL_TIMES times of the sampling grid,
    one time per row (cycled).

    windows: (ctx float64 [W, Lmax], target float64 [W, Hmax]) on the original scale, NaN = missing;
    Hmax in steps.
    """
    ctx_all, tgt_all = windows
    G, N, L, H = shape.G, shape.N, shape.L, shape.H * config.horizon_patch
    pick = np.arange(G) % ctx_all.shape[0]
    ctx, tgt = ctx_all[pick, -L:], tgt_all[pick, :H]
    loc, scale = context_scale(ctx)
    x0 = np.nan_to_num(standardise(tgt, loc, scale), nan=0.0)  # a missing target: clean value 0
    gains = 1.0
    if config.domain == "frequency":  # what the network sees: the first H coordinates of the spectrum
        full = np.nan_to_num(standardise(tgt_all[pick, : config.horizon], loc, scale), nan=0.0)
        x0, gains = to_spectrum(full)[:, :H], noise_gains(config.horizon)[:H]
    grid = schedule.sampling_grid(REAL_TIMES)
    kappa = grid[np.arange(G * N).reshape(G, N) % grid.size]
    alpha, sigma = schedule.alpha(kappa)[..., None], schedule.sigma(kappa)[..., None]
    x = alpha * x0[:, None, :] + sigma * gains * rng.standard_normal((G, N, H))
    values = context_features(standardise(ctx, loc, scale))
    feats, x = _with_features(config, values, x[..., None].astype(np.float32), rng)
    return Case(feats, x, _time_features(kappa, config.time_embed_dim), shape, "real")


def _full_step_args(case: Case, k_ctx, v_ctx, layers: int, D: int):
    G, N, H = case.shape.G, case.shape.N, case.shape.H
    pos = np.broadcast_to(np.arange(H, dtype=np.int64), (G, N, H)).copy()
    empty = np.zeros((layers, G, N, H, D), np.float32)
    return (case.x, pos, case.t_feat, k_ctx, v_ctx, empty, empty, np.zeros((G, N, H), np.float32))


def _gather_tokens(a: np.ndarray, pos: np.ndarray, layered: bool) -> np.ndarray:
    """Per-row tokens `pos` [G, N, S] of a [..., G, N, H, F] (layered: a leading layer axis);
    padding entries (pos == H) take position H - 1."""
    idx = np.minimum(pos, a.shape[-2] - 1)[..., None]
    return np.take_along_axis(a, idx[None] if layered else idx, axis=-2)


def _subset_args(case: Case, pos, k_ctx, v_ctx, k_hor, v_hor, rng: np.random.Generator, drop: float):
    """denoise inputs for the tokens `pos`: the cache is valid except at the computed positions and,
    with probability `drop`, elsewhere (never computed)."""
    G, N, H = case.shape.G, case.shape.N, case.shape.H
    computed = np.zeros((G, N, H + 1), bool)
    np.put_along_axis(computed, pos, True, axis=-1)
    valid = (~computed[..., :H] & (rng.random((G, N, H)) >= drop)).astype(np.float32)
    x_sub = _gather_tokens(case.x, pos, layered=False)
    return (x_sub, pos, case.t_feat, k_ctx, v_ctx, k_hor, v_hor, valid)


# ---------------------------------------------------------------------------------------------
# Checks.
def compare_case(onnx: OrtGraphs, ref: TorchGraphs, case: Case, config: ModelConfig, rng) -> dict:
    """ONNX vs torch on one case: {"encode": (abs, rel), "denoise": (abs, rel)}.

    Both engines get the same denoise inputs, built from torch's encode output. The cache is random
    (random case) or torch's own full step on the same inputs (real case: realistic keys/values).
    """
    shape, layers, D = case.shape, config.num_layers, config.d_model
    k_ctx, v_ctx = ref.encode(case.ctx)
    enc = errors(onnx.encode(case.ctx), (k_ctx, v_ctx))
    if case.kind == "random":
        k_hor = rng.standard_normal((layers, shape.G, shape.N, shape.H, D)).astype(np.float32)
        v_hor = rng.standard_normal(k_hor.shape).astype(np.float32)
    else:
        _, k_hor, v_hor = ref.denoise(*_full_step_args(case, k_ctx, v_ctx, layers, D))
    if shape.S == shape.H and not shape.pad:
        args = _full_step_args(case, k_ctx, v_ctx, layers, D)
    else:
        args = _subset_args(case, subset_positions(rng, shape), k_ctx, v_ctx, k_hor, v_hor, rng, drop=0.2)
    den = errors(onnx.denoise(*args), ref.denoise(*args))
    return {"encode": enc, "denoise": den}


# A full-step graph's outputs as a tuple: (out,) of denoise_full, (out, k_sub, v_sub) of denoise_full_kv.
_FULL_STEP_OUTPUTS = {"denoise_full": lambda graphs, args: (graphs.denoise_full(*args),),
                      "denoise_full_kv": lambda graphs, args: graphs.denoise_full_kv(*args)}


def full_step_errors(onnx: OrtGraphs, ref: TorchGraphs, case: Case, config: ModelConfig,
                     graph: str = "denoise_full") -> tuple:
    """A full-step graph (OPTIONAL_GRAPHS) on a case's every token: ((abs, rel) vs torch's over its
    outputs, max abs difference vs the denoise graph's full step, output for output: eps_sub, then
    k_sub and v_sub for denoise_full_kv)."""
    k_ctx, v_ctx = ref.encode(case.ctx)
    args = (case.x, case.t_feat, k_ctx, v_ctx)
    outs = _FULL_STEP_OUTPUTS[graph](onnx, args)
    full = onnx.denoise(*_full_step_args(case, k_ctx, v_ctx, config.num_layers, config.d_model))
    return (errors(outs, _FULL_STEP_OUTPUTS[graph](ref, args)),
            max(float(np.abs(o - f).max()) for o, f in zip(outs, full)))


def subset_equivalence(engine, case: Case, config: ModelConfig, rng) -> float:
    """Max abs difference between `denoise` on a token subset (cache = the full step's keys/values,
    valid elsewhere) and the full step's rows at those tokens (eps, k, v); padding excluded."""
    shape, layers, D = case.shape, config.num_layers, config.d_model
    k_ctx, v_ctx = engine.encode(case.ctx)
    eps, k_full, v_full = engine.denoise(*_full_step_args(case, k_ctx, v_ctx, layers, D))
    pos = subset_positions(rng, shape)
    args = _subset_args(case, pos, k_ctx, v_ctx, k_full, v_full, rng, drop=0.0)
    out = engine.denoise(*args)
    real = pos < shape.H  # [G, N, S]
    refs = (_gather_tokens(eps, pos, False), _gather_tokens(k_full, pos, True), _gather_tokens(v_full, pos, True))
    err = 0.0
    for o, r in zip(out, refs):
        mask = np.broadcast_to(real[..., None] if o.ndim == 4 else real[None, ..., None], o.shape)
        if mask.any():
            err = max(err, float(np.abs(o - r)[mask].max()))
    return err


def _summary(errs: list[tuple[float, float]]) -> dict:
    if not errs:
        return {"max_abs_err": None, "max_rel_err": None}
    return {"max_abs_err": max(e[0] for e in errs), "max_rel_err": max(e[1] for e in errs)}


def validate_graphs(
    model: ScoreNet,
    paths: dict,
    schedule: NoiseSchedule,
    real_windows=None,
    *,
    tolerance: float = FP32_TOLERANCE,
    subset_tolerance: float = SUBSET_TOLERANCE,
    seed: int = 0,
    real_info: dict | None = None,
) -> dict:
    """The manifest's `validation` section for the graph files `paths` ({graph: path}).

    real_windows: (ctx [W, Lmax], target [W, Hmax]) float64 on the original scale, or None (real
    inputs unavailable; real_info says why). Returns a dict whose "passed" is True only when every
    error is within its tolerance.
    """
    config = model.config
    onnx, ref = OrtGraphs(paths), TorchGraphs(model)
    rng = np.random.default_rng(seed)
    shapes = validation_shapes(config)
    kinds = ["random"] + (["real"] if real_windows is not None else [])
    found = {g: {k: [] for k in kinds} for g in ("encode", "denoise")}
    subset = {"onnx": [], "torch": []}
    # the optional full-step graphs (docs/architecture.md section 4)
    lean = [g for g in OPTIONAL_GRAPHS if g in onnx.sessions]
    full_vs_denoise = []
    for g in lean:
        found[g] = {k: [] for k in kinds}
    for shape in shapes:
        for kind in kinds:
            if kind == "random":
                case = random_case(config, schedule, shape, rng)
            else:
                case = real_case(config, schedule, shape, real_windows, rng)
            for g, e in compare_case(onnx, ref, case, config, rng).items():
                found[g][kind].append(e)
            for g in lean:
                vs_torch, vs_denoise = full_step_errors(onnx, ref, case, config, g)
                found[g][kind].append(vs_torch)
                full_vs_denoise.append(vs_denoise)
            if shape.S < shape.H or shape.pad:
                seed_sub = int(rng.integers(2**31))
                for name, engine in (("onnx", onnx), ("torch", ref)):
                    sub_rng = np.random.default_rng(seed_sub)  # the same subset for both engines
                    subset[name].append(subset_equivalence(engine, case, config, sub_rng))

    report = {"provider": PROVIDER, "seed": seed, "scale": "standardised", "rel_floor": REL_FLOOR,
              "tolerance": tolerance, "graphs": {}}
    for g, by_kind in found.items():
        entry = {kind: _summary(errs) for kind, errs in by_kind.items()}
        entry.update(_summary([e for errs in by_kind.values() for e in errs]))
        if g == "denoise":
            entry["shapes"] = [s.to_dict() for s in shapes]
        elif g in OPTIONAL_GRAPHS:  # the full steps: every token of each shape's H
            entry["shapes"] = [{"G": G, "N": N, "L": L, "H": H} for G, N, L, H in
                               dict.fromkeys((s.G, s.N, s.L, s.H) for s in shapes)]
        else:
            entry["shapes"] = [{"G": G, "L": L} for G, L in dict.fromkeys((s.G, s.L) for s in shapes)]
        entry["tolerance"] = tolerance
        entry["passed"] = bool(entry["max_abs_err"] <= tolerance)
        report["graphs"][g] = entry
    sub = {k: max(v) if v else None for k, v in subset.items()}
    report["subset_equivalence"] = {
        "max_abs_err": sub,
        "tolerance": subset_tolerance,
        "shapes": [s.to_dict() for s in shapes if s.S < s.H or s.pad],
        "inputs": kinds,
        "passed": all(v is not None and v <= subset_tolerance for v in sub.values()),
    }
    checks = [report["subset_equivalence"]]
    if lean:  # the lean full steps reproduce the denoise graph's full step as a subset step does
        report["full_step_equivalence"] = {"max_abs_err": max(full_vs_denoise), "tolerance": subset_tolerance,
                                           "against": "denoise graph, every token, empty cache",
                                           "passed": max(full_vs_denoise) <= subset_tolerance}
        checks.append(report["full_step_equivalence"])
    report["real_data"] = real_info or ({"used": real_windows is not None})
    report["passed"] = all(e["passed"] for e in report["graphs"].values()) and all(c["passed"] for c in checks)
    return report


def failures(report: dict) -> list[str]:
    """One phrase per check of a validation report that exceeded its tolerance."""
    out = [
        f"{g}: max abs error {e['max_abs_err']:.3g} > tolerance {e['tolerance']:.3g}"
        for g, e in report.get("graphs", {}).items()
        if not e["passed"]
    ]
    sub = report.get("subset_equivalence", {})
    if sub and not sub["passed"]:
        errs = ", ".join(f"{k} {v:.3g}" for k, v in sub["max_abs_err"].items() if v is not None)
        out.append(f"subset equivalence: max abs error {errs} > tolerance {sub['tolerance']:.3g}")
    full = report.get("full_step_equivalence", {})
    if full and not full["passed"]:
        out.append(f"denoise_full graphs vs denoise: max abs error {full['max_abs_err']:.3g} > tolerance {full['tolerance']:.3g}")
    return out
