"""TensorRT backend: the artifact's `.plan` engines behind the OnnxEngine interface (the `trt` extra).

    engine = TrtEngine.load("engines/metro-traffic.plan")        # or NAME.fp16.plan
    k_ctx, v_ctx = engine.encode(ctx)                             # DeviceTensors: stay on the GPU
    eps, k_sub, v_sub = engine.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid)

    cache = engine.device_cache(G, N, T)                          # token cache kept on the GPU
    eps = engine.denoise_cached(x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache, hor_valid)

T = config.horizon_tokens (horizon / horizon_patch) is the token axis H of the engines; shapes are
OnnxEngine's (x_sub [G, N, S, Ph * Fh], eps_sub [G, N, S, Ph]).

What crosses the PCIe bus per call (docs/tensorrt.md):
- encode: ctx up; k_ctx/v_ctx stay on the device as DeviceTensors, which denoise binds directly.
- denoise (the sampler's current path): x_sub, pos_sub, t_feat, hor_valid and the host token cache
  k_hor/v_hor go up; eps_sub, k_sub, v_sub come down (the sampler scatters them into its cache).
- denoise_cached: only x_sub, pos_sub, t_feat, hor_valid go up and eps_sub comes down; the keys
  and values of the cache are scattered on the device by the `cache_update` engine.

Refused before any engine call, with what to do: no GPU (use the .onnx), tensorrt missing (the
extra), plans built by another TensorRT version or for another GPU (rebuild command), a plan file
that does not match its manifest, and any call shape outside the engines' profile.
tensorrt is imported when an engine is created, never by `import dil.runtime`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dil.runtime.backends.cuda import CudaError, DeviceBuffer, Stream, activate, gpu_info
from dil.runtime.backends.onnx_engine import EngineError, EngineStats
from dil.runtime.support.files import sha256_file
from dil.runtime.manifest import Manifest, ManifestError, inside, load_manifest
from dil.runtime.backends.trt_profile import (
    INPUT_SHAPES,
    OUTPUT_SHAPES,
    PlanMismatch,
    ProfileError,
    check_plan_record,
    check_shapes,
    rebuild_command,
)

_GRAPHS = ("encode", "denoise")


class DeviceTensor:
    """A tensor in GPU memory: `ptr`, `shape`, `dtype`. np.asarray(t) copies it to the host.

    It keeps its buffer alive; `owner` holds the engine whose stream orders the copies.
    """

    def __init__(self, buffer: DeviceBuffer, shape, dtype, stream: Stream, ptr: int | None = None):
        self.buffer, self.shape, self.dtype, self._stream = buffer, tuple(int(s) for s in shape), np.dtype(dtype), stream
        self.ptr = buffer.ptr if ptr is None else int(ptr)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self._stream.download(out, self.ptr)  # ordered after the work that wrote it
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={self.shape}, dtype={self.dtype})"


class DeviceTokenCache:
    """Keys/values of every horizon token on the GPU: k, v DeviceTensors f32 [layers, G, N, T, D]
    (T horizon tokens), zero at the start (never-computed tokens are masked by hor_valid; zeros keep
    them finite)."""

    def __init__(self, engine: "TrtEngine", G: int, N: int, T: int):
        cfg = engine.config
        shape = (cfg.num_layers, G, N, T, cfg.d_model)
        nbytes = int(np.prod(shape)) * 4
        stream = engine._stream
        self._bufs = [DeviceBuffer(nbytes) for _ in range(4)]  # k, v and the next step's k, v
        for b in self._bufs:
            stream.zero(b.ptr, nbytes)
        self._tensors = [DeviceTensor(b, shape, np.float32, stream) for b in self._bufs]
        self.shape = shape

    @property
    def k(self) -> DeviceTensor:
        return self._tensors[0]

    @property
    def v(self) -> DeviceTensor:
        return self._tensors[1]

    @property
    def next_k(self) -> DeviceTensor:
        return self._tensors[2]

    @property
    def next_v(self) -> DeviceTensor:
        return self._tensors[3]

    def swap(self) -> None:
        self._tensors = self._tensors[2:] + self._tensors[:2]

    def to_host(self) -> tuple[np.ndarray, np.ndarray]:
        return self.k.numpy(), self.v.numpy()


class _Plan:
    """One deserialised engine with its execution context and reusable device buffers."""

    def __init__(self, trt, runtime, graph: str, path: Path, stream: Stream):
        self.graph, self.path, self.stream = graph, path, stream
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f"{path.name} could not be deserialised by TensorRT {trt.__version__} (see its log above)")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if sorted(self.inputs) != sorted(INPUT_SHAPES[graph]) or sorted(self.outputs) != sorted(OUTPUT_SHAPES[graph]):
            raise EngineError(f"{path.name} does not match its manifest: inputs {self.inputs}, outputs {self.outputs}")
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        for n, dt in self.dtypes.items():
            want = np.int64 if n == "pos_sub" else np.float32
            if dt != want:
                raise EngineError(f"{path.name}: tensor {n} is {dt}, expected {np.dtype(want)} (I/O stays float32)")
        self._buffers: dict[str, DeviceBuffer] = {}

    def buffer(self, name: str, nbytes: int) -> DeviceBuffer:
        """The reusable device buffer of a tensor, grown when too small."""
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            self.stream.synchronize()  # the old buffer may still be read by queued work
            buf = self._buffers[name] = DeviceBuffer(nbytes)
        return buf

    def bind_input(self, name: str, value) -> int:
        if isinstance(value, DeviceTensor):
            if value.dtype != self.dtypes[name]:
                raise EngineError(f"{self.graph}: device tensor {name} is {value.dtype}, expected {self.dtypes[name]}")
            ptr, shape = value.ptr, value.shape
        else:
            arr = np.ascontiguousarray(value, dtype=self.dtypes[name])
            ptr, shape = self.buffer(name, arr.nbytes).ptr, arr.shape
            self.stream.upload(self._buffers[name], arr)
        if not self.context.set_input_shape(name, tuple(shape)):
            raise EngineError(f"{self.graph}: TensorRT refused shape {list(shape)} for {name}")
        self.context.set_tensor_address(name, ptr)
        return ptr

    def run(self, feeds: dict, out_tensors: dict | None = None) -> dict[str, DeviceTensor]:
        """Enqueue one execution. feeds: {input: ndarray | DeviceTensor}; out_tensors: {output:
        DeviceTensor} to write into (else the plan's own buffers). Returns {output: DeviceTensor}."""
        for name in self.inputs:
            self.bind_input(name, feeds[name])
        out_tensors = dict(out_tensors or {})
        for name in self.outputs:
            shape = tuple(int(s) for s in self.context.get_tensor_shape(name))
            if name not in out_tensors:
                nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtypes[name].itemsize
                out_tensors[name] = DeviceTensor(self.buffer(name, nbytes), shape, self.dtypes[name], self.stream)
            elif out_tensors[name].shape != shape:
                raise EngineError(f"{self.graph}: output {name} has shape {list(shape)}, its buffer {list(out_tensors[name].shape)}")
            self.context.set_tensor_address(name, out_tensors[name].ptr)
        if not self.context.execute_async_v3(self.stream.handle):
            raise EngineError(f"{self.graph}: TensorRT execution failed (see its log above)")
        return out_tensors


class TrtEngine:
    """encode/denoise on TensorRT plans, with OnnxEngine's interface (`manifest`, `config`, `stats`).

    manifest: an artifact whose manifest has a `tensorrt` record (dil-export --tensorrt). device: the
    GPU ordinal. plan_dir: where the plan files are (default: beside the manifest). `profile` is the engines' {axis: {min, opt, max}}; `max_batch` its G max.
    """

    def __init__(self, manifest: Manifest, device: int = 0, plan_dir=None):
        self.manifest = manifest
        self.config = manifest.model
        self.stats = EngineStats()
        onnx_name = f"{manifest.path.parent / manifest.name}.onnx" if manifest.path else f"{manifest.name}.onnx"
        info = gpu_info(device)
        if info is None:
            raise EngineError(f"no NVIDIA GPU on this machine: TensorRT plans cannot run here; use the ONNX engine "
                              f"(--engine {onnx_name})")
        self._rebuild = rebuild_command(manifest.path)
        record = manifest.extra.get("tensorrt")
        if not record:
            raise EngineError(f"{manifest.path} has no TensorRT engines: build them with {self._rebuild}")
        from dil.runtime.support.deps import require

        trt = require("tensorrt", "trt")
        try:
            check_plan_record(record, trt.__version__, info.name, info.compute_capability, self._rebuild)
        except PlanMismatch as exc:
            raise EngineError(str(exc)) from None
        self.profile = record["profile"]
        self.precision = record.get("precision", manifest.precision)
        folder = Path(plan_dir) if plan_dir is not None else manifest.graph_path("encode", "plan").parent
        paths = {g: inside(folder, manifest.graph_path(g, "plan").name, f"graphs.{g}.plan_file") for g in _GRAPHS}
        want = {g: manifest.graphs[g].get("plan_sha256") for g in _GRAPHS}
        if record.get("cache_update"):
            paths["cache_update"] = inside(folder, record["cache_update"].get("file"), "tensorrt.cache_update.file")
            want["cache_update"] = record["cache_update"].get("sha256")
        for g, p in paths.items():
            if not p.is_file():
                raise EngineError(f"plan file {p} named by {manifest.path} is missing: rebuild with {self._rebuild}")
            if not isinstance(want[g], str) or len(want[g]) != 64:  # a plan without its hash is never run
                raise ManifestError(f"manifest {manifest.path} lacks the sha256 of plan {p.name}: rebuild with {self._rebuild}")
            if sha256_file(p) != want[g]:
                raise EngineError(f"plan file {p} does not match its manifest (sha256 differs): rebuild with {self._rebuild}")
        try:
            activate(device)
            self._stream = Stream()
        except CudaError as exc:
            raise EngineError(str(exc)) from None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._plans = {g: _Plan(trt, self._runtime, g, p, self._stream) for g, p in paths.items()}
        self.device = info

    @classmethod
    def load(cls, engine, device: int = 0) -> "TrtEngine":
        """Engine for any path naming the artifact (NAME.plan, NAME.fp16.plan, NAME.json, ...)."""
        return cls(load_manifest(engine), device=device)

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT ({self.precision})"]

    call_tokens = None  # a GPU: calls as large as the profile allows

    @property
    def max_batch(self) -> int:
        return int(self.profile["G"]["max"])

    def _check(self, graph: str, feeds: dict) -> None:
        try:
            check_shapes(graph, feeds, self.config, self.profile, self._rebuild)
        except ProfileError as exc:
            raise EngineError(str(exc)) from None

    def encode(self, ctx: np.ndarray) -> tuple[DeviceTensor, DeviceTensor]:
        """ctx f32 [G, L, Fc] -> (k_ctx, v_ctx) DeviceTensors f32 [layers, G, L/P, D] (kept on the
        GPU; P = context_patch)."""
        feeds = {"ctx": np.asarray(ctx, dtype=np.float32)}
        self._check("encode", feeds)
        start = time.perf_counter()
        try:
            plan = self._plans["encode"]
            G, L = feeds["ctx"].shape[:2]
            shape = (self.config.num_layers, G, L // self.config.context_patch, self.config.d_model)
            # Fresh buffers: the keys/values live as long as the caller holds them (the forecast).
            outs = {n: DeviceTensor(DeviceBuffer(int(np.prod(shape)) * 4), shape, np.float32, self._stream)
                    for n in ("k_ctx", "v_ctx")}
            plan.run(feeds, outs)
            self._stream.synchronize()
        except CudaError as exc:
            raise EngineError(f"encode failed: {exc}") from None
        finally:
            self.stats.seconds += time.perf_counter() - start
        self.stats.encode_calls += 1
        return outs["k_ctx"], outs["v_ctx"]

    def _denoise_feeds(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid) -> dict:
        def host(a, dtype):
            return a if isinstance(a, DeviceTensor) else np.asarray(a, dtype=dtype)

        f32 = np.float32
        return {"x_sub": host(x_sub, f32), "pos_sub": host(pos_sub, np.int64), "t_feat": host(t_feat, f32),
                "k_ctx": host(k_ctx, f32), "v_ctx": host(v_ctx, f32), "k_hor": host(k_hor, f32),
                "v_hor": host(v_hor, f32), "hor_valid": host(hor_valid, f32)}

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        """OnnxEngine.denoise on TensorRT; any input may be a DeviceTensor (bound without a copy).

        Returns host arrays: eps_sub f32 [G, N, S, Ph] (the network's output per step of each token,
        eps or v per config.prediction), k_sub/v_sub f32 [layers, G, N, S, D].
        """
        feeds = self._denoise_feeds(x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid)
        self._check("denoise", feeds)
        start = time.perf_counter()
        try:
            outs = self._plans["denoise"].run(feeds)
            result = tuple(outs[n].numpy() for n in ("eps_sub", "k_sub", "v_sub"))
        except CudaError as exc:
            raise EngineError(f"denoise failed: {exc}") from None
        finally:
            self.stats.seconds += time.perf_counter() - start
        self.stats.denoise_calls += 1
        return result

    @property
    def has_device_cache(self) -> bool:
        """True when the plans include cache_update (the sampler then keeps k_hor/v_hor on the GPU)."""
        return "cache_update" in self._plans

    def device_cache(self, G: int, N: int, T: int) -> DeviceTokenCache | None:
        """A zeroed token cache of T horizon tokens (config.horizon_tokens for a forecast) on the GPU
        for denoise_cached; None without the cache_update plan."""
        if "cache_update" not in self._plans:
            return None
        return DeviceTokenCache(self, G, N, T)

    def denoise_cached(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache: DeviceTokenCache, hor_valid) -> np.ndarray:
        """denoise with the token cache on the GPU: attends to cache.k/v, then scatters the fresh keys
        and values of the computed tokens (pos_sub < T) into the cache on the device.

        Returns eps_sub f32 [G, N, S, Ph] (the only output copied to the host).
        """
        feeds = self._denoise_feeds(x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache.k, cache.v, hor_valid)
        self._check("denoise", feeds)
        start = time.perf_counter()
        try:
            den = self._plans["denoise"]
            outs = den.run(feeds)
            pos_dev = feeds["pos_sub"]
            if not isinstance(pos_dev, DeviceTensor):  # reuse the copy denoise just uploaded
                pos_dev = DeviceTensor(den._buffers["pos_sub"], pos_dev.shape, np.int64, self._stream)
            upd = {"k_hor": cache.k, "v_hor": cache.v, "pos_sub": pos_dev, "k_sub": outs["k_sub"], "v_sub": outs["v_sub"]}
            self._check("cache_update", upd)
            self._plans["cache_update"].run(upd, {"k_new": cache.next_k, "v_new": cache.next_v})
            eps = outs["eps_sub"].numpy()
            cache.swap()
        except CudaError as exc:
            raise EngineError(f"denoise failed: {exc}") from None
        finally:
            self.stats.seconds += time.perf_counter() - start
        self.stats.denoise_calls += 1
        return eps
