"""ONNX Runtime sessions for the two graphs of an artifact (docs/architecture.md section 4).

    engine = OnnxEngine.load("engines/metro-traffic.onnx", providers=["CPUExecutionProvider"], threads=2)
    k_ctx, v_ctx = engine.encode(ctx)
    out_sub, k_sub, v_sub = engine.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid)

The engine checks on load that each graph's input/output names, element types and fixed dimensions
match the manifest contract (`dil.runtime.manifest`), and it accumulates the time spent inside
`session.run` so that the sampler can report engine time apart from its own control time.
onnxruntime is imported on first use, which keeps `import dil.runtime` quick.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.chunks import CPU_CALL_TOKENS
from dil.runtime.manifest import (
    DENOISE_FULL_INPUTS,
    DENOISE_FULL_KV_OUTPUTS,
    DENOISE_FULL_OUTPUTS,
    DENOISE_INPUTS,
    DENOISE_OUTPUTS,
    ENCODE_INPUTS,
    ENCODE_OUTPUTS,
    GRAPH_IO,
    OPTIONAL_GRAPHS,
    Manifest,
    load_manifest,
)

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
DEFAULT_IO_BINDING = False


class EngineError(ValueError):
    """A graph cannot be loaded or run, or does not match the manifest. The message is one line."""


@dataclass
class EngineStats:
    """Calls and seconds spent inside session.run since creation (or the last reset())."""

    encode_calls: int = 0
    denoise_calls: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.encode_calls = self.denoise_calls = 0
        self.seconds = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _contract(cfg: ModelConfig) -> dict:
    """Expected (element type, shape) of every graph input/output; a str dim is dynamic. H and S
    count horizon tokens of Ph = horizon_patch steps: x_sub carries Ph * Fh values per token and
    eps_sub Ph outputs."""
    layers, D, E, Ph = cfg.num_layers, cfg.d_model, cfg.time_embed_dim, cfg.horizon_patch
    f32, i64 = "tensor(float)", "tensor(int64)"
    kv_ctx = (f32, (layers, "G", "Lp", D))  # Lp = L / context_patch context tokens
    kv_hor = (f32, (layers, "G", "N", "H", D))
    kv_sub = (f32, (layers, "G", "N", "S", D))
    full_in = {  # the full-step graphs' inputs (denoise_full, denoise_full_kv)
        "x_hor": (f32, ("G", "N", "H", Ph * cfg.horizon_features)),
        "t_feat": (f32, ("G", "N", E)),
        "k_ctx": kv_ctx,
        "v_ctx": kv_ctx,
    }
    return {
        "encode": (
            {"ctx": (f32, ("G", "L", cfg.context_features))},
            {"k_ctx": kv_ctx, "v_ctx": kv_ctx},
        ),
        "denoise": (
            {
                "x_sub": (f32, ("G", "N", "S", Ph * cfg.horizon_features)),
                "pos_sub": (i64, ("G", "N", "S")),
                "t_feat": (f32, ("G", "N", E)),
                "k_ctx": kv_ctx,
                "v_ctx": kv_ctx,
                "k_hor": kv_hor,
                "v_hor": kv_hor,
                "hor_valid": (f32, ("G", "N", "H")),
            },
            {"eps_sub": (f32, ("G", "N", "S", Ph)), "k_sub": kv_sub, "v_sub": kv_sub},
        ),
        "denoise_full": (full_in, {"out": (f32, ("G", "N", "H", Ph))}),
        "denoise_full_kv": (full_in, {"out": (f32, ("G", "N", "H", Ph)), "k_sub": kv_hor, "v_sub": kv_hor}),
    }


def _check_io(graph: str, path: Path, session, cfg: ModelConfig) -> None:
    """Raise EngineError unless the session's I/O matches the manifest contract."""
    want_in, want_out = _contract(cfg)[graph]
    names = GRAPH_IO[graph]
    for kind, args, want, expected_names in (
        ("input", session.get_inputs(), want_in, names[0]),
        ("output", session.get_outputs(), want_out, names[1]),
    ):
        got = [a.name for a in args]
        if sorted(got) != sorted(expected_names):
            raise EngineError(
                f"graph {path.name} does not match its manifest: {kind}s {got}, expected {list(expected_names)}"
            )
        for a in args:
            dtype, shape = want[a.name]
            if a.type != dtype:
                raise EngineError(f"graph {path.name} does not match its manifest: {kind} {a.name} is {a.type}, expected {dtype}")
            dims = list(a.shape)
            bad = len(dims) != len(shape) or any(
                isinstance(w, int) and isinstance(d, int) and d != w for d, w in zip(dims, shape)
            )
            if bad:
                raise EngineError(
                    f"graph {path.name} does not match its manifest: {kind} {a.name} has shape {dims}, "
                    f"expected {list(shape)} for the manifest's model config"
                )


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and a GPU is present, else the CPU provider.

    docs/architecture.md section 7: onnxruntime and onnxruntime-gpu must not be installed together (whichever
    was installed last owns the module, and the CPU build silently hides the GPU one); that case
    gets a warning naming the fix.
    """
    import onnxruntime as ort

    from dil.runtime.backends.cuda import device_count

    _warn_both_onnxruntimes()
    if "CUDAExecutionProvider" in ort.get_available_providers() and device_count() > 0:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return list(DEFAULT_PROVIDERS)


def _warn_both_onnxruntimes() -> None:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            version(dist)
            found.append(dist)
        except PackageNotFoundError:
            pass
    if len(found) == 2:
        import warnings

        warnings.warn("onnxruntime and onnxruntime-gpu are both installed; keep one "
                      "(pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu)", stacklevel=3)


def _providers(providers) -> list[str]:
    import onnxruntime as ort

    if providers is None or providers == "auto":
        providers = default_providers()
    elif isinstance(providers, str):
        providers = [providers]
    else:
        providers = list(providers)
    available = ort.get_available_providers()
    for p in providers:
        name = p[0] if isinstance(p, tuple) else p  # (name, options) pairs as in ONNX Runtime
        if name not in available:
            raise EngineError(f"execution provider {name!r} is not available (available: {', '.join(available)})")
    return providers


def _session(path: Path, providers: list, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings would clutter the CLI output
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    # Memory patterns off: ONNX Runtime then plans one block per set of input shapes on top of its
    # arena. Measured (fast sampler, shipped model, 50 series x 100 samples in one call, 10 steps,
    # 1 thread): peak RSS 773 MB with them, 543 MB without (4 series per call: 197 vs 175 MB), and
    # no wall-time difference beyond noise. Turning the CPU arena off as well saved nothing more.
    opts.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises several pybind types; report one line
        text = str(exc).strip().splitlines()
        detail = text[0][:200] if text else type(exc).__name__
        raise EngineError(f"{path} is not a loadable ONNX model ({detail})") from None


class _OutputPool:
    """Host buffers that ONNX Runtime writes a graph output into (I/O binding), reused across calls.

    A buffer is handed out again only when nothing outside the pool refers to it any more (no
    caller holds the array returned earlier or a view of it: CPython's reference count), so a
    result the caller keeps (the token cache adopts a full step's keys/values) is never
    overwritten. The sampler keeps at most two of a graph's earlier outputs alive at a call (its
    loop variables and the cache), hence KEEP buffers per output.
    """

    KEEP = 3

    def __init__(self):
        self._buffers: dict[str, list[np.ndarray]] = {}

    def take(self, name: str, shape: tuple, capacity: int = 0, dtype=np.float32) -> np.ndarray:
        """A C-contiguous array of `shape` that nobody else holds, reused when one fits; a new
        buffer holds max(capacity, size) elements (so that later, larger calls fit too)."""
        size = int(np.prod(shape))
        pool = self._buffers.setdefault(name, [])
        for buf in pool:
            # 3 references: the pool's list, the loop variable and getrefcount's argument.
            if buf.size >= size and buf.dtype == dtype and sys.getrefcount(buf) <= 3:
                return buf[:size].reshape(shape)
        buf = np.empty(max(size, int(capacity)), dtype=dtype)
        pool.append(buf)
        if len(pool) > self.KEEP:  # forget the oldest: whoever still holds it keeps it alive
            del pool[0]
        return buf[:size].reshape(shape)


class OnnxEngine:
    """The encode and denoise graphs of one artifact on ONNX Runtime.

    manifest: the artifact's Manifest (its graph files are loaded). providers: an ONNX Runtime
    provider name or list (default: `default_providers()`, CUDA where onnxruntime-gpu and a GPU
    are present, else CPU); threads: intra-op threads (None: ONNX
    Runtime's default, one per physical core). `stats` accumulates calls and seconds in session.run.
    It implements dil.runtime.sampling.contracts.Engine with no series limit and no device cache,
    and FullStepEngine: full_step is True when the artifact has the optional denoise_full graph,
    full_step_kv when it has denoise_full_kv (artifacts exported before they existed have not; the
    sampler then calls denoise on full steps).

    io_binding: run every graph through ONNX Runtime's I/O binding, its outputs written into host
    buffers the engine reuses across calls (a buffer the caller still holds is never reused), the
    same results bit for bit. Off by default: on the CPU provider it measured no faster than
    session.run (fast sampler, 1 thread, 1 x 100 and 50 x 100 samples: 1.03-1.04x the host path's
    time, within noise) and its pooled key/value buffers raised peak RSS (543 -> 566 MB at 50 x 100).
    """

    max_batch: int | None = None  # any number of series per call
    call_tokens: int | None = None  # set per providers in __init__

    def __init__(self, manifest: Manifest, providers=None, threads: int | None = None,
                 io_binding: bool = DEFAULT_IO_BINDING):
        if threads is not None and int(threads) < 1:
            raise EngineError(f"threads must be >= 1, got {threads}")
        self.manifest = manifest
        self.config: ModelConfig = manifest.model
        self.stats = EngineStats()
        self.io_binding = bool(io_binding)
        provider_list = _providers(providers)
        # On a CPU a call past CPU_CALL_TOKENS token rows costs more per window (docs/sampler.md 12);
        # a GPU runs larger calls at a lower cost per row.
        self.call_tokens = CPU_CALL_TOKENS if provider_list[0] == "CPUExecutionProvider" else None
        self._sessions, self._bindings, self._outputs = {}, {}, _OutputPool()
        self.full_step = "denoise_full" in manifest.graphs
        self.full_step_kv = "denoise_full_kv" in manifest.graphs
        for graph in ("encode", "denoise") + tuple(g for g in OPTIONAL_GRAPHS if g in manifest.graphs):
            path = manifest.graph_path(graph)
            session = _session(path, provider_list, threads)
            _check_io(graph, path, session, self.config)
            self._sessions[graph] = session

    @classmethod
    def load(cls, engine, providers=None, threads: int | None = None,
             io_binding: bool = DEFAULT_IO_BINDING) -> "OnnxEngine":
        """Engine for any path naming the artifact (NAME.onnx, NAME.json, ...; see dil.runtime.manifest).

        Raises ManifestError or EngineError with a one-line message.
        """
        return cls(load_manifest(engine), providers=providers, threads=threads, io_binding=io_binding)

    @property
    def providers(self) -> list[str]:
        """The providers the denoise session actually runs on, in priority order."""
        return self._sessions["denoise"].get_providers()

    def _run(self, graph: str, outputs, feeds: dict) -> list[np.ndarray]:
        start = time.perf_counter()
        try:
            if self.io_binding:
                return self._run_bound(graph, outputs, feeds)
            return self._sessions[graph].run(list(outputs), feeds)
        except Exception as exc:  # noqa: BLE001 - shape errors etc. from ORT: one line
            text = str(exc).strip().splitlines()
            raise EngineError(f"{graph} failed: {text[0][:300] if text else type(exc).__name__}") from None
        finally:
            self.stats.seconds += time.perf_counter() - start

    def _run_bound(self, graph: str, outputs, feeds: dict) -> list[np.ndarray]:
        """_run through I/O binding: inputs read in place, outputs written into pooled host buffers
        (no per-call output allocation by ONNX Runtime, no copy into fresh NumPy arrays)."""
        session = self._sessions[graph]
        binding = self._bindings.get(graph)
        if binding is None:
            binding = self._bindings[graph] = session.io_binding()
        shapes = self._output_shapes(graph, feeds)
        # Raw pointers: the binding keeps no reference to the caller's arrays after the call
        # (bind_cpu_input would hold the last ones, e.g. a whole token cache, until the next call).
        for name, arr in feeds.items():
            binding.bind_input(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        result = []
        for name in outputs:
            shape, capacity = shapes[name]
            arr = self._outputs.take(f"{graph}/{name}", shape, capacity)
            binding.bind_output(name, "cpu", 0, np.float32, arr.shape, arr.ctypes.data)
            result.append(arr)
        session.run_with_iobinding(binding)
        return result

    def _output_shapes(self, graph: str, feeds: dict) -> dict:
        """{output: (shape, capacity)} of a call on `feeds`, read off the graph's contract (_contract)
        with its dynamic dims sized by the inputs; capacity: the elements of the same call computing
        every token (S = H), so that a buffer fits every later call on the batch. ValueError for an
        input of the wrong rank (ONNX Runtime's own check has not run yet)."""
        want_in, want_out = _contract(self.config)[graph]
        sizes = {}
        for name, arr in feeds.items():
            dims = want_in[name][1]
            if arr.ndim != len(dims):
                raise ValueError(f"Invalid rank for input: {name} Got: {arr.ndim} Expected: {len(dims)}")
            sizes.update((d, n) for d, n in zip(dims, arr.shape) if isinstance(d, str))
        if "L" in sizes:
            sizes["Lp"] = sizes["L"] // self.config.context_patch
        every = dict(sizes, S=sizes.get("H", sizes.get("S")))
        out = {}
        for name in want_out:
            dims = want_out[name][1]
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in dims)
            out[name] = (shape, int(np.prod([every[d] if isinstance(d, str) else d for d in dims])))
        return out

    def encode(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ctx f32 [G, L, Fc] (L a multiple of context_patch P) -> (k_ctx, v_ctx) f32 [layers, G, L/P, D]."""
        self.stats.encode_calls += 1
        k, v = self._run("encode", ENCODE_OUTPUTS, {"ctx": np.ascontiguousarray(ctx, dtype=np.float32)})
        return k, v

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        """One network evaluation of S horizon tokens per row (shapes in docs/architecture.md section 4).

        H counts horizon tokens (at most config.horizon_tokens), each Ph = horizon_patch steps.
        x_sub f32 [G, N, S, Ph * Fh] (per step of the token: noisy value, known features), pos_sub
        i64 [G, N, S] (token index; H = padding), t_feat f32 [G, N, E], k_ctx/v_ctx f32
        [layers, G, L/P, D], k_hor/v_hor f32 [layers, G, N, H, D], hor_valid f32 [G, N, H]
        -> eps_sub f32 [G, N, S, Ph] (the network's output per step of the token: eps or v per
        config.prediction), k_sub/v_sub f32 [layers, G, N, S, D].
        """
        self.stats.denoise_calls += 1
        f32 = np.float32
        feeds = {
            "x_sub": np.ascontiguousarray(x_sub, dtype=f32),
            "pos_sub": np.ascontiguousarray(pos_sub, dtype=np.int64),
            "t_feat": np.ascontiguousarray(t_feat, dtype=f32),
            "k_ctx": np.ascontiguousarray(k_ctx, dtype=f32),
            "v_ctx": np.ascontiguousarray(v_ctx, dtype=f32),
            "k_hor": np.ascontiguousarray(k_hor, dtype=f32),
            "v_hor": np.ascontiguousarray(v_hor, dtype=f32),
            "hor_valid": np.ascontiguousarray(hor_valid, dtype=f32),
        }
        eps, k, v = self._run("denoise", DENOISE_OUTPUTS, feeds)
        return eps, k, v

    def denoise_full(self, x_hor, t_feat, k_ctx, v_ctx) -> np.ndarray:
        """A full step on the lean graph (no masks, no token cache, no keys/values out): x_hor f32
        [G, N, T, Ph * Fh] (token t at position t, T = config.horizon_tokens at most), t_feat f32
        [G, N, E], k_ctx/v_ctx f32 [layers, G, L/P, D] -> out f32 [G, N, T, Ph], what denoise returns
        as eps_sub for pos_sub = arange(T) and hor_valid = 0 (within float32 rounding). Counted as a
        denoise call. EngineError when the artifact has no denoise_full graph (full_step False)."""
        if not self.full_step:
            raise EngineError(f"{self.manifest.path} has no denoise_full graph (re-export with dil-export to add it)")
        self.stats.denoise_calls += 1
        return self._run("denoise_full", DENOISE_FULL_OUTPUTS, _full_feeds(x_hor, t_feat, k_ctx, v_ctx))[0]

    def denoise_full_kv(self, x_hor, t_feat, k_ctx, v_ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """denoise_full that also returns the tokens' keys/values: -> (out f32 [G, N, T, Ph], k, v f32
        [layers, G, N, T, D]), what denoise returns for pos_sub = arange(T) and hor_valid = 0 (within
        float32 rounding). Counted as a denoise call. EngineError when the artifact has no
        denoise_full_kv graph (full_step_kv False)."""
        if not self.full_step_kv:
            raise EngineError(f"{self.manifest.path} has no denoise_full_kv graph (re-export with dil-export to add it)")
        self.stats.denoise_calls += 1
        out, k, v = self._run("denoise_full_kv", DENOISE_FULL_KV_OUTPUTS, _full_feeds(x_hor, t_feat, k_ctx, v_ctx))
        return out, k, v

    def device_cache(self, G: int, N: int, T: int) -> None:
        """None: the sampler keeps the token cache's keys/values on the host."""
        return None

    def denoise_cached(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache, hor_valid):
        raise EngineError("ONNX Runtime engines keep no device cache (device_cache returns None)")


def _full_feeds(x_hor, t_feat, k_ctx, v_ctx) -> dict:
    """The full-step graphs' feeds (DENOISE_FULL_INPUTS), contiguous float32."""
    return {name: np.ascontiguousarray(a, dtype=np.float32)
            for name, a in zip(DENOISE_FULL_INPUTS, (x_hor, t_feat, k_ctx, v_ctx))}
