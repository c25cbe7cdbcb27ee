"""`SamplerStats`: what one forecast cost (docs/sampler.md section 10)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class SamplerStats:
    """What one forecast cost. Tokens count (series, sample, horizon step) network evaluations.

    tokens_computed: horizon tokens the network computed (padding excluded); slots_computed: the
        same with padding entries (what the engine actually evaluated).
    full_tokens: what a full sampler computes (G * N * H * steps); tokens_computed / full_tokens is
        the share of network work done, reuse_ratio the share served from the token cache.
    full_steps: steps in which every row computed every token; series_full_steps: (series, step)
        pairs computed in full. probes: random probe tokens. order_histogram: token updates at
        effective solver order 1, 2, 3. refinements, merges: lattice node splits and merges.
    engine_seconds: inside session.run (encode + denoise). control_seconds: the rest of the loop
        (planning, gather/scatter, solver). wall_seconds: the whole sampler.
    """

    series: int = 0
    samples: int = 0
    steps: int = 0
    full_steps: int = 0
    series_full_steps: int = 0
    encode_calls: int = 0
    engine_calls: int = 0
    tokens_computed: int = 0
    full_tokens: int = 0
    slots_computed: int = 0
    probes: int = 0
    refinements: int = 0
    merges: int = 0
    order_histogram: list = field(default_factory=lambda: [0, 0, 0])
    engine_seconds: float = 0.0
    control_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: "SamplerStats") -> "SamplerStats":
        """Totals over two batches of series (same samples and steps)."""
        out = SamplerStats()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b)
        out.samples, out.steps = max(self.samples, other.samples), max(self.steps, other.steps)
        return out

    @property
    def token_fraction(self) -> float:
        return self.tokens_computed / self.full_tokens if self.full_tokens else 0.0

    @property
    def reuse_ratio(self) -> float:
        return 1.0 - self.token_fraction if self.full_tokens else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_fraction"] = self.token_fraction
        d["reuse_ratio"] = self.reuse_ratio
        return d
