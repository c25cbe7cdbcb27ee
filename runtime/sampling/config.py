"""`SamplerConfig`: every setting of the sampler, its default and its valid range (docs/sampler.md 1).

The table of docs/sampler.md is the user-facing description; the defaults here are the single source.
Bad values raise ValueError naming the setting and its valid range when the config is built, so a
wrong setting never reaches an engine call. `sampler_config(config, **overrides)` is the one way a
call's settings are merged (Forecaster.predict, dil-run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from dil.runtime.sampling.schedule import DEFAULT_SPACING, SPACINGS
from dil.runtime.sampling.solver import MAX_ORDER

# x0_clip: the default and the range of a clip that is on (docs/sampler.md section 2). A clip below 1
# context standard deviation would cut ordinary values; the default was chosen on the validation
# windows (benchmarks/x0_error.py sweep).
X0_CLIP_DEFAULT = 6.0
X0_CLIP_MIN, X0_CLIP_MAX = 1.0, 1000.0


def check_int(name: str, value, low: int, high: int) -> None:
    """Raise ValueError "NAME must be an integer in [low, high], got VALUE" unless value is one
    (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _is_number(value) -> bool:
    """A finite int or float (bools are refused)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return ok and math.isfinite(float(value))


def _check_float(name: str, value, low: float, high: float, open_low: bool = False) -> None:
    ok = _is_number(value) and (low < value if open_low else low <= value) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be a number in {bracket}{low:g}, {high:g}], got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of the sampler (defaults documented in docs/sampler.md, section 1).

    Plain DPM-Solver++: num_diffusion_steps (T of the model, a check), steps (M, network
    evaluations), solver_order (used when the lattice is off), spacing (the
    step grid: "logsnr", uniform in log-SNR, or "time", uniform in diffusion time; see
    NoiseSchedule.sampling_grid). Switches: lattice, cache (both off = the plain sampler, bit for bit).
    Lattice: max_scales, entropy_budget, temperature, max_solver_order, stability_threshold_low/high,
    refine_threshold, refine_gap, merge_threshold, entropy_weights (score, solver, temporal,
    spectral, guidance). Cache: K, tau_0, energy_eps, max_age, R, warmup_steps, tau_warn,
    random_probe_ratio, probe_target, probe_warn, full_fraction, bucket, fill,
    core_follow, final_full. Guard: x0_clip (the data prediction is clipped to [-x0_clip, x0_clip]
    on the standardised scale; 0 = off).
    """

    num_diffusion_steps: int = 1000
    steps: int = 20
    solver_order: int = 2
    spacing: str = DEFAULT_SPACING
    lattice: bool = True
    cache: bool = True
    # lattice controller (docs/sampler.md section 5)
    max_scales: int = 4
    entropy_budget: float = 0.2
    temperature: float = 5.0
    max_solver_order: int = 3
    stability_threshold_low: float = 0.1
    stability_threshold_high: float = 0.5
    refine_threshold: float = 0.7
    refine_gap: float = 0.1
    merge_threshold: float = 0.5
    entropy_weights: tuple = (0.3, 0.3, 0.2, 0.2, 0.0)
    # E2-CRF token cache (docs/sampler.md sections 4, 6 and 7)
    K: int = 5
    tau_0: float = 0.1
    energy_eps: float = 0.1
    max_age: int = 4
    R: int = 10
    warmup_steps: int = 1
    tau_warn: float = 0.5
    random_probe_ratio: float = 0.05
    probe_target: float = 0.2
    probe_warn: float = 1.0
    full_fraction: float = 0.75
    bucket: int = 4
    fill: bool = True
    core_follow: bool = True
    final_full: bool = True
    # Data-prediction guard (docs/sampler.md section 2, "Data-prediction clip"): x0_hat is clipped to
    # [-x0_clip, x0_clip] context standard deviations wherever it is formed; 0 turns it off.
    x0_clip: float = X0_CLIP_DEFAULT

    def __post_init__(self) -> None:
        object.__setattr__(self, "entropy_weights", tuple(self.entropy_weights))
        self._validate()

    def _validate(self) -> None:
        check_int("num_diffusion_steps", self.num_diffusion_steps, 1, 100_000)
        check_int("steps", self.steps, 1, 1000)
        check_int("solver_order", self.solver_order, 1, MAX_ORDER)
        if not isinstance(self.spacing, str) or self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        _check_bool("lattice", self.lattice)
        _check_bool("cache", self.cache)
        check_int("max_scales", self.max_scales, 1, 16)
        _check_float("entropy_budget", self.entropy_budget, 0.0, 1.0)
        _check_float("temperature", self.temperature, 0.0, 1000.0)
        check_int("max_solver_order", self.max_solver_order, 1, MAX_ORDER)
        _check_float("stability_threshold_low", self.stability_threshold_low, 0.0, 1.0)
        _check_float("stability_threshold_high", self.stability_threshold_high, 0.0, 1.0)
        if self.stability_threshold_low >= self.stability_threshold_high:
            raise ValueError(
                f"stability_threshold_low must be below stability_threshold_high, got "
                f"{self.stability_threshold_low!r} >= {self.stability_threshold_high!r}"
            )
        _check_float("refine_threshold", self.refine_threshold, 0.0, 1.0, open_low=True)
        _check_float("refine_gap", self.refine_gap, 0.0, 1.0)
        _check_float("merge_threshold", self.merge_threshold, 0.0, 1.0, open_low=True)
        if self.merge_threshold >= self.refine_threshold:
            raise ValueError(
                f"merge_threshold must be below refine_threshold, got {self.merge_threshold!r} >= "
                f"{self.refine_threshold!r}"
            )
        w = self.entropy_weights
        if len(w) != 5:
            raise ValueError(f"entropy_weights must be 5 numbers >= 0 (score, solver, temporal, spectral, guidance), got {w!r}")
        for j, wj in enumerate(w):
            _check_float(f"entropy_weights[{j}]", wj, 0.0, 1e6)
        if sum(w) <= 0:
            raise ValueError(f"entropy_weights must have a positive sum, got {w!r}")
        check_int("K", self.K, 0, 100_000)
        _check_float("tau_0", self.tau_0, 0.0, 1000.0, open_low=True)
        _check_float("energy_eps", self.energy_eps, 0.0, 1000.0, open_low=True)
        check_int("max_age", self.max_age, 0, 1000)
        check_int("R", self.R, 1, 100_000)
        check_int("warmup_steps", self.warmup_steps, 1, 1000)
        _check_float("tau_warn", self.tau_warn, 0.0, 1000.0, open_low=True)
        _check_float("random_probe_ratio", self.random_probe_ratio, 0.0, 1.0)
        _check_float("probe_target", self.probe_target, 0.0, 1000.0, open_low=True)
        _check_float("probe_warn", self.probe_warn, 0.0, 1000.0, open_low=True)
        _check_float("full_fraction", self.full_fraction, 0.0, 1.0, open_low=True)
        check_int("bucket", self.bucket, 1, 1024)
        _check_bool("fill", self.fill)
        _check_bool("core_follow", self.core_follow)
        _check_bool("final_full", self.final_full)
        if not (_is_number(self.x0_clip) and (self.x0_clip == 0 or X0_CLIP_MIN <= self.x0_clip <= X0_CLIP_MAX)):
            raise ValueError(f"x0_clip must be 0 (off) or a number in [{X0_CLIP_MIN:g}, {X0_CLIP_MAX:g}], got {self.x0_clip!r}")

    @property
    def plain(self) -> bool:
        """True when this is the plain full-recompute DPM-Solver++ sampler (lattice and cache off)."""
        return not self.lattice and not self.cache

    def settings(self) -> dict:
        """All settings by name (JSON-friendly)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self)
                for v in [getattr(self, f.name)]}


SETTING_NAMES = frozenset(f.name for f in fields(SamplerConfig))


def sampler_config(config: SamplerConfig | None = None, **overrides) -> SamplerConfig:
    """The SamplerConfig of a call: `config` (default SamplerConfig()) with the named fields
    replaced; an override given as None keeps the config's value (an option left unset).
    Raises ValueError naming an unknown or out-of-range setting."""
    unknown = sorted(set(overrides) - SETTING_NAMES)
    if unknown:
        raise ValueError(f"unknown sampler setting {unknown[0]!r} (valid: {', '.join(sorted(SETTING_NAMES))})")
    given = {name: value for name, value in overrides.items() if value is not None}
    base = config if config is not None else SamplerConfig()
    return replace(base, **given) if given else base
