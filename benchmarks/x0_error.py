"""Why some sample paths run away, and what the data-prediction clip (`x0_clip`) does about it.

Run from the repository root (ONNX Runtime CPU and the torch module, the shipped model by default):

    python benchmarks/x0_error.py error                       # |x0_hat - x0| per noise level (torch)
    python benchmarks/x0_error.py trajectories --windows 10   # when the wild paths leave the range
    python benchmarks/x0_error.py sweep --split val --clips none,20,10,6,4
    python benchmarks/x0_error.py sweep --split test --clips none,6 --no-lattice --no-cache

`error`: on real windows of the validation part, each window's standardised target x0 is noised
to x = alpha x0 + sigma eps at every evaluation time of the 20-step sampler; the torch module
rebuilt from the artifact's weights gives its output (eps_hat, or v_hat for a v-prediction model),
and dil.runtime.sampling.parametrisation.to_x0_eps turns it into x0_hat (what the sampler's token
cache stores; epsilon: (x - sigma eps_hat) / alpha) and eps_hat. The table gives, per noise level, RMS and max of
|x0_hat - x0| next to sigma / alpha, the RMS of the network's eps error, and the share of tokens
whose x0_hat lies beyond 5 and 10 (the context's standard deviations: the standardised scale).

`trajectories`: the runtime sampler on windows of a split, every step's x0_hat recorded (the one
the solver uses, after the controller's adjust). A path is wild when its final sample leaves
[-5, 5] on the standardised scale; the table gives per step the share of paths whose x0_hat leaves
[-5, 5] and, for the wild paths, the step from which the token that ends wild stayed beyond 5.

`sweep`: the evaluation protocol of dil-eval (same windows, ids, noise streams and metrics; split
"val" scores the validation part instead of the test part) for each x0_clip ("none" = 0, the guard
off). Besides CRPS, MAE of the median and coverage it counts sample paths beyond 5 and 10 context
standard deviations, the extreme samples, and forecast rows (window, step) whose mean lies outside
[q05, q95].

`error` and `trajectories` feed the network (value, mask) contexts only: a model with time
features or covariates is refused there (`sweep` runs the evaluation protocol, which builds them).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import numpy as np

DEFAULT_ENGINE = "engines/metro-traffic.json"
WILD = (5.0, 10.0)  # path limits, in context standard deviations
NEAR = (3.0, 4.0)  # also counted: paths beyond these (a clip below 5 holds every path inside 5)


# -- windows ------------------------------------------------------------------------------------
def split_spec(spec, T: int, split: str):
    """The dataset spec whose "test" part is `split` of the original ("test" unchanged, "val": the
    validation rows), so that the harness's protocol windows are that part's windows."""
    from dil.data.registry import Splits
    from dil.data.windows import split_bounds

    if split == "test":
        return spec
    start, end = split_bounds(spec, T)[split]
    return replace(spec, splits=Splits(start - 1, 1, end - start, unit="rows"))


def eval_windows(fc, spec, table, split: str, n_windows):
    from dil.evaluate.harness import protocol_windows

    return protocol_windows(table, split_spec(spec, table.values.shape[0], split), fc.context_length, fc.horizon,
                            n_windows)


def load(engine: str, threads):
    from dil.evaluate.engine_eval import engine_data
    from dil.runtime import Forecaster

    fc = Forecaster.load(engine, threads=threads)
    spec, table = engine_data(engine, fc.manifest)
    return fc, spec, table


def _without_features(fc, what: str) -> None:
    cfg = fc.engine.config
    if cfg.context_features != 2 or cfg.horizon_features != 1:
        raise SystemExit(f"x0_error.py {what}: the model takes time features or covariates "
                         f"(context_features {cfg.context_features}, horizon_features {cfg.horizon_features}); "
                         "only `sweep` supports it")


# -- 1. the data-prediction error per noise level -----------------------------------------------
def x0_error(engine: str, n_windows: int, draws: int, steps: int, seed: int, threads) -> list[dict]:
    import torch

    from dil.evaluate.torch_baselines import load_reference
    from dil.runtime.sampling.parametrisation import to_x0_eps
    from dil.runtime.sampling.schedule import diffusion_time_features
    from dil.runtime.inputs.scaling import context_features, context_scale, standardise

    fc, spec, table = load(engine, threads)
    _without_features(fc, "error")
    ref = load_reference(engine, onnx_engine=fc.engine)
    model, schedule = ref.model.eval(), ref.schedule
    w = eval_windows(fc, spec, table, "val", n_windows)
    ctx, tgt = w.contexts[:, 0], w.targets[:, 0]
    keep = ~np.isnan(tgt).any(axis=1) & ~np.isnan(ctx).all(axis=1)
    ctx, tgt = ctx[keep], tgt[keep]
    loc, scale = context_scale(ctx)
    x0 = standardise(tgt, loc, scale)[:, None, :]  # [G, 1, H]
    feats = torch.from_numpy(context_features(standardise(ctx, loc, scale)))
    rng = np.random.default_rng(seed)
    rows = []
    for kappa in schedule.sampling_grid(steps):
        alpha, sigma = float(schedule.alpha(kappa)), float(schedule.sigma(kappa))
        eps = rng.standard_normal((len(ctx), draws, x0.shape[-1]))
        x = alpha * x0 + sigma * eps
        t_feat = torch.from_numpy(diffusion_time_features(np.full((len(ctx), draws), kappa), model.config.time_embed_dim)
                                  .astype(np.float32))
        with torch.no_grad():
            out = model.full_step(feats, torch.from_numpy(x.astype(np.float32))[..., None], t_feat)[..., 0]
        x0_hat, eps_hat = to_x0_eps(out.double().numpy(), x, alpha, sigma, model.config.prediction)
        err = np.abs(x0_hat - x0)
        rows.append({"kappa": float(kappa), "alpha": alpha, "sigma_over_alpha": sigma / alpha,
                     "eps_rms": float(np.sqrt(np.mean((eps_hat - eps) ** 2))),
                     "x0_rms": float(np.sqrt(np.mean(err**2))), "x0_max": float(err.max()),
                     "x0_hat_max": float(np.abs(x0_hat).max()),
                     "beyond_5": float(np.mean(np.abs(x0_hat) > 5)), "beyond_10": float(np.mean(np.abs(x0_hat) > 10))})
    print(f"{len(ctx)} validation windows x {draws} noise draws x {x0.shape[-1]} tokens per noise level; "
          f"RMS of the standardised target itself (the error of predicting 0): {np.sqrt(np.mean(x0**2)):.3f}")
    low, high = eps_output_range(model)
    print(f"the network's {model.config.prediction} output is bounded by its output LayerNorm + Linear head: "
          f"[{low:.3f}, {high:.3f}]")
    return rows


def eps_output_range(model) -> tuple[float, float]:
    """The range of the output head(norm_out(h)) (eps or v) over every h: the LayerNorm's normalised vector u has
    mean 0 and norm sqrt(D), so w . (gamma u) lies within sqrt(D) times the norm of the zero-mean
    part of w * gamma, around the offset w . beta + b. The head has one row per step of a horizon
    token (horizon_patch rows): the widest range over them."""
    gamma = model.norm_out.weight.detach().double().numpy()
    beta = model.norm_out.bias.detach().double().numpy()
    low, high = np.inf, -np.inf
    for w, b in zip(model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy()):
        v = w * gamma
        reach = np.linalg.norm(v - v.mean()) * np.sqrt(v.size)
        offset = float(w @ beta + b)
        low, high = min(low, offset - reach), max(high, offset + reach)
    return low, high


# -- 2. sampler trajectories ----------------------------------------------------------------------
class Recorder:
    """A runtime controller that keeps, after every step's adjust, the x0_hat the solver uses (per
    horizon step: the cache's x0_steps, [G, N, H] whatever the model's horizon_patch)."""

    def __init__(self, inner):
        self.inner, self.x0 = inner, []

    @property
    def counters(self):
        return self.inner.counters

    def start(self, *args, **kwargs):
        self.inner.start(*args, **kwargs)

    def plan(self, i, cache):
        return self.inner.plan(i, cache)

    def adjust(self, i, cache, computed):
        self.inner.adjust(i, cache, computed)
        self.x0.append(np.array(cache.x0_steps))

    def observe(self, i, cache):
        self.inner.observe(i, cache)


def trajectories(engine: str, split: str, n_windows: int, samples: int, steps: int, seed: int, threads,
                 settings: dict) -> dict:
    from dil.evaluate.harness import window_ids
    from dil.runtime.sampling.rng import SeriesStreams
    from dil.runtime.sampling.config import sampler_config
    from dil.runtime.sampling.sampler import make_controller, sample
    from dil.runtime.inputs.scaling import context_features, context_scale, standardise

    fc, spec, table = load(engine, threads)
    _without_features(fc, "trajectories")
    w = eval_windows(fc, spec, table, split, n_windows)
    ids = [i for row, ok in zip(window_ids(w.names, w.origins), w.valid) for i, v in zip(row, ok) if v]
    ctx = w.contexts[w.valid]
    config = sampler_config(None, steps=steps, **settings)
    loc, scale = context_scale(ctx)
    z = standardise(ctx, loc, scale)
    x0, x_T = [], []  # per window: [steps, N, H], [N, H]
    for g in range(len(ctx)):  # one window per call: a series' result does not depend on the batch
        streams = SeriesStreams(seed, [ids[g]])
        rec = Recorder(make_controller(config))
        x_T.append(streams.initial_noise(samples, fc.horizon))
        sample(fc.engine, fc.schedule, context_features(z[g : g + 1]), x_T[-1], config, streams, controller=rec)
        x0.append(np.stack(rec.x0)[:, 0])
        x_T[-1] = x_T[-1][0]
    x0, x_T = np.stack(x0, axis=1), np.stack(x_T)  # [steps, W, N, H], [W, N, H]
    final = np.abs(x0[-1])
    wild = final.max(axis=-1) > WILD[0]  # [W, N]
    out_now = np.abs(x0).max(axis=-1) > WILD[0]  # [steps, W, N]
    # For each wild path: its most extreme final token; the first step from which that token's
    # x0_hat stayed beyond the limit until the end.
    w_idx, n_idx = np.nonzero(wild)
    h_idx = final[w_idx, n_idx].argmax(axis=-1)
    beyond = np.abs(x0[:, w_idx, n_idx, h_idx]) > WILD[0]  # [steps, paths]
    stays = np.flip(np.cumprod(np.flip(beyond, 0), axis=0), 0).astype(bool)
    first = np.where(stays.any(axis=0), stays.argmax(axis=0), steps)
    kappas = fc.schedule.sampling_grid(steps, config.spacing)
    rows = [{"step": i, "kappa": float(kappas[i]), "alpha": float(fc.schedule.alpha(kappas[i])),
             "paths_beyond_5": float(out_now[i].mean()),
             "wild_paths_beyond_5": float(out_now[i][wild].mean()) if wild.any() else 0.0,
             "x0_hat_max": float(np.abs(x0[i]).max()),
             "wild_leave_here": int(np.count_nonzero(first == i))} for i in range(steps)]
    return {"windows": len(ctx), "samples": samples, "steps": steps, "settings": settings,
            "paths": int(wild.size), "wild_paths_5": int(wild.sum()),
            "wild_paths_10": int((final.max(axis=-1) > WILD[1]).sum()),
            "final_max": float(final.max()),
            # The initial noise of the wild paths' extreme tokens against that of every token.
            "wild_abs_x_T": float(np.abs(x_T[w_idx, n_idx, h_idx]).mean()) if wild.any() else None,
            "all_abs_x_T": float(np.abs(x_T).mean()),
            "wild_same_sign_as_x_T": float(np.mean(np.sign(x0[-1, w_idx, n_idx, h_idx]) == np.sign(x_T[w_idx, n_idx, h_idx])))
            if wild.any() else None, "rows": rows}


# -- 3. the evaluation protocol with outlier counts -----------------------------------------------
class OutlierCount:
    """Counts, over the forecasts it sees, sample paths beyond WILD context standard deviations, the
    extreme samples (original scale) and forecast rows whose mean lies outside [q05, q95]."""

    def __init__(self):
        self.paths = 0
        self.beyond = {limit: 0 for limit in NEAR + WILD}
        self.rows = self.mean_outside = 0
        self.low, self.high = np.inf, -np.inf

    def add(self, contexts, samples) -> None:
        from dil.runtime.outputs.quantiles import sample_quantiles
        from dil.runtime.inputs.scaling import context_scale

        loc, scale = context_scale(contexts)  # contexts: [G, L], the model's window
        dev = np.abs(samples - loc[:, None, None]).max(axis=-1) / scale[:, None]  # [G, N]
        self.paths += dev.size
        for limit in self.beyond:  # a path held at a clip of exactly `limit` is not beyond it (rounding)
            self.beyond[limit] += int(np.count_nonzero(dev > limit * (1 + 1e-9)))
        q05, q95 = sample_quantiles(samples, axis=1, levels=np.array([0.05, 0.95]))
        mean = samples.mean(axis=1)
        self.rows += mean.size
        self.mean_outside += int(np.count_nonzero((mean < q05) | (mean > q95)))
        self.low, self.high = min(self.low, float(samples.min())), max(self.high, float(samples.max()))

    def to_dict(self) -> dict:
        return {"paths": self.paths, **{f"paths_beyond_{int(k)}": v for k, v in self.beyond.items()},
                "rows": self.rows, "rows_mean_outside_q05_q95": self.mean_outside,
                "sample_min": self.low, "sample_max": self.high}


def sweep(engine: str, split: str, clips: list, n_windows, samples: int, steps: int, seed: int, threads,
          settings: dict, batch_size: int) -> list[dict]:
    from dil.evaluate.engine_eval import forecaster_fn
    from dil.evaluate.harness import EvalOptions, run_evaluation

    fc, spec, table = load(engine, threads)
    L = fc.context_length
    spec = split_spec(spec, table.values.shape[0], split)
    options = EvalOptions(n_windows=n_windows, samples=samples, steps=steps, seed=seed, batch_size=batch_size)
    rows = []
    for clip in clips:
        extra = dict(settings) if clip is None else {**settings, "x0_clip": clip}
        inner = forecaster_fn(fc, samples, steps, seed, **extra)
        count = OutlierCount()

        def fn(contexts, ids, *features, inner=inner, count=count):
            s = inner(contexts, ids, *features)
            count.add(np.asarray(contexts)[:, -L:], s)
            return s

        report = run_evaluation(fn, table, spec, L, fc.horizon, options, features=fc.features).report
        m = report["model"]
        rows.append({"x0_clip": "none (setting absent)" if clip is None else clip, "crps": m["crps"], "mae": m["mae"],
                     "coverage_50": m["coverage_50"], "coverage_90": m["coverage_90"],
                     "windows": report["protocol"]["series_windows"], **count.to_dict()})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


# -- output ---------------------------------------------------------------------------------------
def table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _clip(text: str):
    if text == "absent":  # a build without the setting (today's sampler before the guard)
        return None
    return 0.0 if text == "none" else float(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("error", "trajectories", "sweep"))
    p.add_argument("--engine", default=DEFAULT_ENGINE)
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--windows", type=int, default=None, help="Evenly spaced windows of the split (default: all).")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=8, help="error: noise draws per window and noise level.")
    p.add_argument("--clips", default="none,20,10,6,4",
                   help="sweep: x0_clip values, comma-separated; none = 0 (guard off), absent = the setting not passed.")
    p.add_argument("--x0-clip", type=_clip, default=None, help="trajectories: the sampler's x0_clip (default: its default).")
    p.add_argument("--no-lattice", dest="lattice", action="store_false")
    p.add_argument("--no-cache", dest="cache", action="store_false")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="Also write the rows here.")
    a = p.parse_args(argv)
    settings = {"lattice": a.lattice, "cache": a.cache}
    print("command: python benchmarks/x0_error.py " + " ".join(sys.argv[1:] if argv is None else argv))
    if a.what == "error":
        rows = x0_error(a.engine, a.windows or 10_000, a.draws, a.steps, a.seed, a.threads)
        print(table(rows, ["kappa", "alpha", "sigma_over_alpha", "eps_rms", "x0_rms", "x0_max", "x0_hat_max",
                           "beyond_5", "beyond_10"]))
        result = rows
    elif a.what == "trajectories":
        if a.x0_clip is not None:
            settings["x0_clip"] = a.x0_clip
        result = trajectories(a.engine, a.split, a.windows or 10, a.samples, a.steps, a.seed, a.threads, settings)
        print(f"{result['windows']} {a.split} windows x {a.samples} samples, settings {settings}: "
              f"{result['wild_paths_5']} of {result['paths']} paths end beyond 5, {result['wild_paths_10']} beyond 10; "
              f"largest |sample| {result['final_max']:.4g} (standardised)")
        if result["wild_abs_x_T"] is not None:
            print(f"initial noise |x_T| at the wild paths' extreme tokens: mean {result['wild_abs_x_T']:.3f} "
                  f"(all tokens {result['all_abs_x_T']:.3f}); the sample has the sign of that x_T in "
                  f"{result['wild_same_sign_as_x_T']:.0%} of them")
        print(table(result["rows"], ["step", "kappa", "alpha", "paths_beyond_5", "wild_paths_beyond_5", "x0_hat_max",
                                     "wild_leave_here"]))
    else:
        clips = [_clip(c) for c in a.clips.split(",")]
        result = sweep(a.engine, a.split, clips, a.windows, a.samples, a.steps, a.seed, a.threads, settings,
                       a.batch_size)
        print(f"{a.split} windows, {a.samples} samples, {a.steps} steps, sampler {settings}")
        print(table(result, ["x0_clip", "windows", "crps", "mae", "coverage_50", "coverage_90", "paths",
                             "paths_beyond_3", "paths_beyond_4", "paths_beyond_5", "paths_beyond_10", "sample_min",
                             "sample_max", "rows_mean_outside_q05_q95"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
