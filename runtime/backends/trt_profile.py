"""TensorRT optimization profiles and plan compatibility: pure Python, no tensorrt, no GPU.

A profile gives every dynamic axis of the graphs (docs/architecture.md section 4) a (min, opt, max) range:

    G  series windows per engine call       default (1, 16, 32)   (dil-run's --batch-series is 16)
    N  samples per series                   default (1, 100, 128)
    S  horizon tokens computed per call     default (1, T, T)
    L  context steps                        default (L, L, L)     the runtime always feeds context_length
    H  horizon tokens                       default (T, T, T)     the runtime always forecasts horizon

T = horizon_tokens = horizon / horizon_patch: with horizon patches (Ph > 1) a horizon token is Ph
steps, the engines' x_sub carries Ph * Fh values per token and eps_sub Ph outputs; with Ph = 1,
T is the horizon in steps.

With context patches (P = context_patch > 1) L stays in steps and every L of the profile must be a
multiple of P; the keys/values k_ctx, v_ctx carry Lp = L / P context tokens (the axis "Lp" below,
derived from L, never a profile axis of its own).

`dil-export` builds the engines for these ranges and records them in the manifest; the runtime
checks every call against them before it reaches TensorRT (`check_shapes`), and checks that a plan
was built by this TensorRT version for this GPU (`check_plan_record`) before deserialising it.
"""

from __future__ import annotations

import hashlib
import json

from dil.runtime.model.config import ModelConfig

AXES = ("G", "N", "S", "L", "H")
DEFAULT_G = (1, 16, 32)
DEFAULT_N = (1, 100, 128)
# The tensors of the engines' contracts, as axis names and fixed sizes (runtime.engine checks the
# ONNX graphs against the same). "cache_update" is the TensorRT-only scatter of fresh keys/values
# into the device-resident token cache (dil.export.tensorrt.cache_update_graph).
_KV_CTX, _KV_HOR, _KV_SUB = ("layers", "G", "Lp", "D"), ("layers", "G", "N", "H", "D"), ("layers", "G", "N", "S", "D")
INPUT_SHAPES = {
    "encode": {"ctx": ("G", "L", "Fc")},
    "denoise": {
        "x_sub": ("G", "N", "S", "Ph*Fh"),
        "pos_sub": ("G", "N", "S"),
        "t_feat": ("G", "N", "E"),
        "k_ctx": _KV_CTX,
        "v_ctx": _KV_CTX,
        "k_hor": _KV_HOR,
        "v_hor": _KV_HOR,
        "hor_valid": ("G", "N", "H"),
    },
    "cache_update": {"k_hor": _KV_HOR, "v_hor": _KV_HOR, "pos_sub": ("G", "N", "S"), "k_sub": _KV_SUB, "v_sub": _KV_SUB},
}
OUTPUT_SHAPES = {
    "encode": {"k_ctx": _KV_CTX, "v_ctx": _KV_CTX},
    "denoise": {"eps_sub": ("G", "N", "S", "Ph"), "k_sub": _KV_SUB, "v_sub": _KV_SUB},
    "cache_update": {"k_new": _KV_HOR, "v_new": _KV_HOR},
}


class ProfileError(ValueError):
    """A profile range is invalid, or a call's shape falls outside the engine's profile."""


class PlanMismatch(ValueError):
    """A plan was built for another TensorRT version or GPU (rebuild it). One-line message."""


def _fixed(config: ModelConfig) -> dict[str, int]:
    Ph = config.horizon_patch
    return {"layers": config.num_layers, "D": config.d_model, "E": config.time_embed_dim,
            "Fc": config.context_features, "Ph*Fh": Ph * config.horizon_features, "Ph": Ph}


def resolve_profile(config: ModelConfig, **ranges) -> dict[str, dict[str, int]]:
    """{axis: {"min", "opt", "max"}} for every axis; ranges: axis=(min, opt, max) or None (default).

    Raises ProfileError unless 1 <= min <= opt <= max, L <= context_length, H <= horizon_tokens,
    S max <= H max (a call never computes more tokens than the horizon has) and every L is a
    multiple of the model's context_patch.
    """
    L, H = config.context_length, config.horizon_tokens
    defaults = {"G": DEFAULT_G, "N": DEFAULT_N, "L": (L, L, L), "H": (H, H, H)}
    unknown = set(ranges) - set(AXES)
    if unknown:
        raise ProfileError(f"unknown profile axis {sorted(unknown)[0]!r} (axes: {', '.join(AXES)})")
    out = {}
    for axis in ("G", "N", "L", "H"):
        out[axis] = _range(axis, ranges.get(axis) or defaults[axis])
    out["S"] = _range("S", ranges.get("S") or (1, out["H"]["max"], out["H"]["max"]))
    Ph = config.horizon_patch
    if Ph > 1 and out["H"]["max"] > H:
        raise ProfileError(f"profile H max {out['H']['max']} exceeds the model's {H} horizon tokens (horizon "
                           f"{config.horizon} steps / horizon_patch {Ph}): --trt-horizon counts tokens")
    for axis, limit, what in (("L", L, "context_length"), ("H", H, "horizon")):
        if out[axis]["max"] > limit:
            raise ProfileError(f"profile {axis} max {out[axis]['max']} exceeds the model's {what} {limit}")
    if out["S"]["max"] > out["H"]["max"]:
        raise ProfileError(f"profile S max {out['S']['max']} exceeds H max {out['H']['max']}")
    P = config.context_patch
    if any(v % P for v in out["L"].values()):
        lo, opt, hi = (out["L"][k] for k in ("min", "opt", "max"))
        raise ProfileError(f"profile L {lo},{opt},{hi} must be multiples of the model's context_patch {P} "
                           f"(context steps; {P} steps make one context token)")
    return out


def _range(axis: str, value) -> dict[str, int]:
    try:
        lo, opt, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ProfileError(f"profile {axis} must be three integers MIN,OPT,MAX, got {value!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise ProfileError(f"profile {axis} needs 1 <= min <= opt <= max, got {lo},{opt},{hi}")
    return {"min": lo, "opt": opt, "max": hi}


def parse_range(text: str) -> tuple[int, int, int]:
    """'1,16,32' -> (1, 16, 32); a single number 'K' means K,K,K."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ProfileError(f"expected MIN,OPT,MAX (three integers) or one integer, got {text!r}")
    return tuple(int(p) for p in parts)


def input_shapes(graph: str, config: ModelConfig, profile: dict) -> dict[str, tuple[tuple, tuple, tuple]]:
    """{input name: (min shape, opt shape, max shape)} of one engine, for set_shape (k_ctx, v_ctx:
    the profile's L in context tokens, L / context_patch)."""
    fixed = _fixed(config)
    P = config.context_patch

    def size(d, k):
        if d in fixed:
            return fixed[d]
        if d == "Lp":
            return profile["L"][k] // P
        return profile[d][k] if d in profile else d

    return {name: tuple(tuple(size(d, k) for d in dims) for k in ("min", "opt", "max"))
            for name, dims in INPUT_SHAPES[graph].items()}


def check_shapes(graph: str, feeds: dict, config: ModelConfig, profile: dict, rebuild: str) -> dict[str, int]:
    """Check a call's input shapes against the contract and the profile; returns {axis: size}.

    feeds: {input name: array or anything with .shape}. rebuild: the command to print when a size is
    outside the profile. Raises ProfileError with one line naming the axis, its size and its range.
    The context axis is reported in steps (L): k_ctx's Lp tokens count as L = Lp * context_patch.
    """
    fixed = _fixed(config)
    P = config.context_patch
    sizes: dict[str, int] = {}
    for name, dims in INPUT_SHAPES[graph].items():
        if name not in feeds:
            raise ProfileError(f"{graph}: input {name} is missing")
        shape = tuple(int(s) for s in feeds[name].shape)
        if len(shape) != len(dims):
            raise ProfileError(f"{graph}: input {name} has shape {list(shape)}, expected {len(dims)} axes {list(dims)}")
        for size, d in zip(shape, dims):
            want = fixed.get(d, d if isinstance(d, int) else None)
            if want is not None and size != want:
                raise ProfileError(f"{graph}: input {name} has shape {list(shape)}, axis {d} must be {want}")
            if d == "Lp":
                size, d = size * P, "L"
            if d in profile:
                if sizes.setdefault(d, size) != size:
                    raise ProfileError(f"{graph}: axis {d} is {sizes[d]} in one input and {size} in {name}")
    for d, size in sizes.items():
        r = profile[d]
        if not r["min"] <= size <= r["max"]:
            raise ProfileError(
                f"{d}={size} is outside the engine's profile {d} [{r['min']}, {r['max']}]: "
                f"{_hint(d)}, or rebuild the engines ({rebuild} --trt-{_OPTION[d]} "
                f"{r['min']},{r['opt']},{max(size, r['max'])})"
            )
    return sizes


_OPTION = {"G": "batch", "N": "samples", "S": "tokens", "L": "context", "H": "horizon"}


def _hint(axis: str) -> str:
    return {"G": "lower --batch-series", "N": "use fewer samples", "S": "compute fewer tokens per call",
            "L": "feed the model's context_length", "H": "forecast the model's horizon"}[axis]


def plan_key(onnx_sha256: dict, trt_version: str, compute_capability: str, precision: str, profile: dict,
             mode: str) -> str:
    """The engine-cache key (docs/tensorrt.md): a plan is reusable exactly when this matches."""
    blob = json.dumps([onnx_sha256, trt_version, compute_capability, precision, profile, mode], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_plan_record(record: dict, trt_version: str, gpu_name: str, compute_capability: str, rebuild: str) -> None:
    """Raise PlanMismatch unless the manifest's TensorRT record matches this machine.

    Plans are tied to the TensorRT version that built them and to the GPU model (TensorRT's own
    rule): a different version, compute capability or GPU name is refused with the rebuild command.
    """
    built = record.get("version")
    if built != trt_version:
        raise PlanMismatch(f"the plans were built with TensorRT {built}, this machine has TensorRT {trt_version}: "
                           f"rebuild them here ({rebuild}) or run the .onnx engine")
    cc = record.get("compute_capability")
    if cc != compute_capability:
        raise PlanMismatch(f"the plans were built for compute capability {cc} ({record.get('gpu')}), this GPU "
                           f"({gpu_name}) is {compute_capability}: rebuild them here ({rebuild}) or run the .onnx engine")
    if record.get("gpu") != gpu_name:
        raise PlanMismatch(f"the plans were built on a {record.get('gpu')}, this GPU is a {gpu_name}: "
                           f"rebuild them here ({rebuild}) or run the .onnx engine")


def rebuild_command(manifest_path) -> str:
    """The dil-export command that rebuilds an artifact's plans on this machine."""
    return f"dil-export --engine {manifest_path} --tensorrt"
