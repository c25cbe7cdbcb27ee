"""Which sampler and steps a forecast runs, and why, in one line (`dil-run --stats`, dil-eval's note).

An artifact's defaults are its manifest's "sampler_defaults" (docs/sampler.md section 14, chosen by
`dil-bench --frontier --write-defaults`); without them the built-in SamplerConfig defaults apply;
explicit options override either, setting by setting.
"""

from __future__ import annotations


def sampler_name(config, token_fraction: float | None = None) -> str:
    """The sampler a SamplerConfig runs, in words ("plain DPM-Solver++", "plain DPM-Solver++ of order 1",
    "fast sampler (lattice + token cache)"); the plain sampler's order is named when it is not 2;
    token_fraction: the share of tokens a run computed, named for the fast sampler."""
    if config.plain:
        return "plain DPM-Solver++" + ("" if config.solver_order == 2 else f" of order {config.solver_order}")
    parts = [p for p, on in (("lattice", config.lattice), ("token cache", config.cache)) if on]
    share = "" if token_fraction is None else f", {token_fraction:.0%} of tokens computed"
    return f"fast sampler ({' + '.join(parts)}{share})"


def stats_text(stats) -> str:
    """A SamplerStats as indented lines under "sampler stats:" (dil-run --stats)."""
    d = stats.to_dict()
    lines = [f"  {k:18s} {v:.4f}" if isinstance(v, float) else f"  {k:18s} {v}" for k, v in d.items()]
    return "sampler stats:\n" + "\n".join(lines)


def given_flags(steps=None, lattice=None, cache=None, solver_order=None) -> list[str]:
    """The command-line flags of the sampler options a user gave (None: not given), in option order,
    e.g. ["--steps", "--no-cache"]."""
    flags = ["--steps"] if steps is not None else []
    flags += ["--solver-order"] if solver_order is not None else []
    for name, value in (("lattice", lattice), ("cache", cache)):
        if value is not None:
            flags.append(f"--{'' if value else 'no-'}{name}")
    return flags


def sampler_line(config, manifest, given=()) -> str:
    """One line: the sampler and steps that ran (`config`, a SamplerConfig) and why: the artifact's
    default (`manifest`'s "sampler_defaults" and their "why"), the built-in default, or the options
    in `given` (their flags, e.g. ["--steps"]) over one of those."""
    record = manifest.sampler_defaults
    if record is None:
        source = ("built-in default; the artifact records no sampler_defaults (dil-bench --frontier "
                  "--write-defaults measures them)")
    else:
        default = manifest.default_sampler()
        source = f"artifact default: {record.get('why') or f'{sampler_name(default)}, {default.steps} steps'}"
    if given:
        source = f"{', '.join(given)} given; otherwise the {source}"
    return f"sampler: {sampler_name(config)}, {config.steps} step{'s' * (config.steps != 1)} ({source})"
