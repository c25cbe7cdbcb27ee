"""How a forecast of G series x N samples is split into sampler calls (docs/sampler.md section 12).

Samples: blocks fixed by num_samples alone, block j = samples [j * SAMPLE_BLOCK,
min(N, (j + 1) * SAMPLE_BLOCK)). One sampler call runs one block of some series. The fast
controller decides per series over the rows of its call, so the blocks, never the memory budget,
shape the forecast; each block draws its x_T rows and control uniforms next in its series' streams
(rng.SeriesStreams.from_sample), so samples 0..SAMPLE_BLOCK-1 of a series do not depend on N either.
With N <= SAMPLE_BLOCK there is one block: the whole forecast in one call per series batch.

Series: as many per call as the byte budget allows (at least one, at most batch_series and the
engine's max_batch), and on a CPU at most CPU_CALL_TOKENS token rows (series x samples x horizon
tokens): past that, a larger call costs more per window, not less. Results do not depend on it
(a series' rows never see another series).

The bound: one call holds at most max(budget, bytes_per_row * min(N, SAMPLE_BLOCK)) bytes of
working memory (engine activations, token cache, controller state); beyond that a forecast holds
its results and the x_T of the series in flight (float64, 8 * N * H bytes per series each).
"""

from __future__ import annotations

from dil.runtime.model.config import ModelConfig

SAMPLE_BLOCK = 1024
# Token rows per engine call on a CPU (an engine's call_tokens, contracts.Engine). Measured (benchmarks/full_step.py --calls,
# shipped model, 1 thread, 3 runs on the shared 2-core machine): ms per window in one call at 1, 2,
# 4, 8 windows x 100 samples x 6 tokens: 50.6, 53.9, 64.0, 78.7 / 59.2, 56.0, 64.2, 72.9 / 36.3,
# 34.7, 38.1, 48.7. Past 2 windows (1200 token rows) a call costs more per window than one window
# alone (the activations leave the caches), so larger batches run as several calls of this size.
CPU_CALL_TOKENS = 1200
DEFAULT_MEMORY_BUDGET = 8 * 2**30  # bytes per sampler call; 50 series x 100 samples of the shipped model fit


def sample_blocks(num_samples: int) -> list[tuple[int, int]]:
    """[(start, stop)]: the consecutive sample blocks of a forecast of num_samples samples."""
    return [(n0, min(num_samples, n0 + SAMPLE_BLOCK)) for n0 in range(0, num_samples, SAMPLE_BLOCK)]


def bytes_per_row(model: ModelConfig, steps: int) -> int:
    """Estimated peak bytes one row (series, sample) adds to a sampler call of `steps` steps.

    Engine: float32 activations of a denoise call, per layer the keys/values a horizon token
    attends to (2 (L + H) D, L = context_length / context_patch context tokens, H = horizon /
    horizon_patch horizon tokens), the attention weights (heads H (L + H)) and the MLP (H ffn_dim),
    times 2 for ONNX Runtime's arena, which grows in powers of two. Host: the token cache's and
    the call's keys/values (4 layers H D float32) and the float64 control state (about 24 arrays
    of H, plus the control uniforms 2 (steps - 1) H). Shipped model (L 168, H 24, D 64, 3 layers,
    4 heads, ffn 128, 20 steps): 1.19 MB, against 1.14 MB measured (peak RSS of dil-run,
    1000 vs 4000 samples of one series in one call: 1.21 and 4.55 GB).
    """
    L, D = model.context_length // getattr(model, "context_patch", 1), model.d_model  # L: context tokens
    H = model.horizon // getattr(model, "horizon_patch", 1)  # horizon tokens
    attended = L + H
    engine = 4 * model.num_layers * (2 * attended * D + model.num_heads * H * attended + H * model.ffn_dim)
    host = 4 * 4 * model.num_layers * H * D + 8 * model.horizon * (24 + 2 * max(steps - 1, 0))  # float64 per step
    return 2 * engine + host


def series_per_call(model: ModelConfig, steps: int, num_samples: int, budget: int, batch_series: int,
                    max_batch: int | None, max_tokens: int | None = None) -> int:
    """Series per sampler call: the most whose block of rows fits the byte budget and, when given,
    max_tokens token rows (block rows x horizon tokens, an engine's call_tokens); at least 1, at most
    batch_series and max_batch (None: no engine limit)."""
    rows = min(num_samples, SAMPLE_BLOCK)
    fit = max(1, budget // (rows * bytes_per_row(model, steps)))
    if max_tokens is not None:
        tokens = model.horizon // getattr(model, "horizon_patch", 1)
        fit = min(fit, max(1, max_tokens // (rows * tokens)))
    return max(1, min(fit, batch_series, max_batch or batch_series))
