"""The few CUDA driver calls the TensorRT backend needs, through ctypes (no extra dependency).

    info = gpu_info()            # None when no NVIDIA driver/GPU; else GpuInfo(name, compute_capability)
    buf = DeviceBuffer(nbytes)   # device memory, freed with the object
    stream = Stream(); stream.upload(buf, array); stream.download(array, buf); stream.synchronize()

libcuda.so.1 (the driver, present wherever an NVIDIA GPU is usable) is loaded on first use, so
importing this module costs nothing and works on machines without a GPU. The primary context of
the device is made current: that is the context the CUDA runtime inside TensorRT uses as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

import numpy as np

_LIBS = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


class CudaError(RuntimeError):
    """No usable GPU, or a CUDA driver call failed. The message is one line."""


@dataclass(frozen=True)
class GpuInfo:
    """name: e.g. 'NVIDIA H100 80GB HBM3'; compute_capability: e.g. '9.0'; index: device ordinal."""

    name: str
    compute_capability: str
    index: int = 0


_driver = None
_context: dict[int, ctypes.c_void_p] = {}


def _load():
    """The driver library with cuInit done, or raise CudaError (no driver: no GPU to use)."""
    global _driver
    if _driver is not None:
        return _driver
    lib = None
    for name in _LIBS + tuple(filter(None, [ctypes.util.find_library("cuda")])):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise CudaError("no NVIDIA GPU driver found (libcuda.so.1 cannot be loaded)")
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    for fn, types in {
        "cuMemcpyHtoDAsync_v2": [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p],
        "cuMemcpyDtoHAsync_v2": [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p],
        "cuMemcpyDtoDAsync_v2": [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p],
        "cuMemsetD8Async": [ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t, ctypes.c_void_p],
        "cuMemAlloc_v2": [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t],
        "cuMemFree_v2": [ctypes.c_uint64],
        "cuStreamCreate": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint],
        "cuStreamSynchronize": [ctypes.c_void_p],
        "cuStreamDestroy_v2": [ctypes.c_void_p],
    }.items():
        getattr(lib, fn).argtypes = types
    _check(lib, lib.cuInit(0), "cuInit")
    _driver = lib
    return lib


def _check(lib, result: int, what: str) -> None:
    if result != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorString(result, ctypes.byref(text))
        detail = text.value.decode() if text.value else f"error {result}"
        raise CudaError(f"CUDA {what} failed: {detail}")


def _call(fn: str, *args) -> None:
    lib = _load()
    _check(lib, getattr(lib, fn)(*args), fn)


def device_count() -> int:
    """Number of CUDA devices; 0 when there is no driver or no device (never raises)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    try:
        lib = _load()
    except CudaError:
        return 0
    n = ctypes.c_int(0)
    return int(n.value) if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def gpu_info(index: int = 0) -> GpuInfo | None:
    """Name and compute capability of device `index`, or None without a usable GPU."""
    if device_count() <= index:
        return None
    lib = _load()
    dev = ctypes.c_int()
    _check(lib, lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    _check(lib, lib.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, dev), "cuDeviceGetAttribute")
    _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, dev), "cuDeviceGetAttribute")
    return GpuInfo(name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}", index)


def activate(index: int = 0) -> None:
    """Make device `index`'s primary context current on this thread (what the CUDA runtime uses)."""
    lib = _load()
    if index not in _context:
        dev = ctypes.c_int()
        _check(lib, lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        ctx = ctypes.c_void_p()
        _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _context[index] = ctx
    _check(lib, lib.cuCtxSetCurrent(_context[index]), "cuCtxSetCurrent")


class DeviceBuffer:
    """`nbytes` of device memory (at least 1 byte), freed when the object is collected."""

    def __init__(self, nbytes: int):
        self.nbytes = max(1, int(nbytes))
        ptr = ctypes.c_uint64()
        _call("cuMemAlloc_v2", ctypes.byref(ptr), self.nbytes)
        self.ptr = int(ptr.value)

    def __del__(self):
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr and _driver is not None:
            _driver.cuMemFree_v2(ptr)  # no raise in a finaliser


class Stream:
    """A CUDA stream with the copies the backend needs. `handle` is what execute_async_v3 takes."""

    def __init__(self):
        handle = ctypes.c_void_p()
        _call("cuStreamCreate", ctypes.byref(handle), 0)
        self._handle = handle

    @property
    def handle(self) -> int:
        return int(self._handle.value or 0)

    def upload(self, dst: DeviceBuffer, src: np.ndarray) -> None:
        """Host -> device; src must be C-contiguous and fit in dst. Pageable memory: the call returns
        once src has been staged, so src may be reused right away."""
        if src.nbytes > dst.nbytes:
            raise CudaError(f"upload of {src.nbytes} bytes into a {dst.nbytes}-byte buffer")
        _call("cuMemcpyHtoDAsync_v2", dst.ptr, src.ctypes.data, src.nbytes, self._handle)

    def download(self, dst: np.ndarray, src_ptr: int) -> None:
        """Device -> host into the C-contiguous array dst (returns when the copy is done)."""
        _call("cuMemcpyDtoHAsync_v2", dst.ctypes.data, src_ptr, dst.nbytes, self._handle)

    def copy(self, dst_ptr: int, src_ptr: int, nbytes: int) -> None:
        """Device -> device, asynchronous on this stream."""
        _call("cuMemcpyDtoDAsync_v2", dst_ptr, src_ptr, nbytes, self._handle)

    def zero(self, ptr: int, nbytes: int) -> None:
        _call("cuMemsetD8Async", ptr, 0, nbytes, self._handle)

    def synchronize(self) -> None:
        _call("cuStreamSynchronize", self._handle)

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None and handle.value and _driver is not None:
            _driver.cuStreamDestroy_v2(handle)
