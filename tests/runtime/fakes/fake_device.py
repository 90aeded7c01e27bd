"""A pretend GPU for the fakes: "device memory" is host memory the fake allocators registered, streams are
integer handles, and every call lands in one ordered log.

The fake TensorRT engine reads and writes only addresses inside registered allocations, so a runner that binds
a feed tensor, a host array or a too-small buffer fails loudly instead of corrupting memory. CUDA-graph capture
records kernel launches instead of running them, as on a GPU, so a replay reads whatever the bound buffers hold
at replay time.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class FakeDevice:
    """Allocations, the capture state of each stream, and the call log shared by every fake."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.allocations: dict[int, int] = {}  # address -> size in bytes
        self._keep_alive: list[Any] = []
        self.capturing: dict[int, FakeGraph] = {}  # stream handle -> graph being captured
        self._handles = itertools.count(1)

    def new_stream_handle(self) -> int:
        return next(self._handles)

    def register(self, buffer: Any, address: int, nbytes: int) -> int:
        """Make ``[address, address + nbytes)`` device memory; ``buffer`` owns it and is kept alive."""
        self.allocations[address] = nbytes
        self._keep_alive.append(buffer)
        return address

    def check(self, address: int, nbytes: int, what: str) -> None:
        for start, size in self.allocations.items():
            if start <= address and address + nbytes <= start + size:
                return
        raise AssertionError(
            f"{what}: address {address:#x} (+{nbytes} bytes) is not inside a device allocation"
        )

    def read(self, address: int, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.check(address, nbytes, what)
        return np.frombuffer(ctypes.string_at(address, nbytes), dtype=dtype).reshape(shape).copy()

    def write(self, address: int, array: np.ndarray, what: str) -> None:
        array = np.ascontiguousarray(array)
        self.check(address, array.nbytes, what)
        ctypes.memmove(address, array.ctypes.data, array.nbytes)

    def launch(self, stream: int, kernel: Callable[[], None], name: str) -> None:
        """Run ``kernel`` now, or record it when ``stream`` is being captured into a CUDA graph."""
        graph = self.capturing.get(stream)
        if graph is not None:
            graph.launches.append(kernel)
            self.log.append(("captured", name, stream))
        else:
            kernel()
            self.log.append(("ran", name, stream))

    def names(self) -> list[str]:
        return [entry[0] for entry in self.log]


class FakeGraph:
    """``torch.cuda.CUDAGraph``: holds the launches captured on a stream; ``replay`` runs them again."""

    device: FakeDevice

    def __init__(self) -> None:
        self.launches: list[Callable[[], None]] = []

    def replay(self) -> None:
        self.device.log.append(("graph_replay", len(self.launches)))
        for kernel in self.launches:
            kernel()


# -- torch.cuda -------------------------------------------------------------------------------------------


def fake_torch_cuda(device: FakeDevice) -> dict[str, Any]:
    """The ``torch.cuda`` attributes TrtRunner uses, as ``{name: replacement}`` for ``monkeypatch.setattr``."""
    dev = device

    class Stream:
        def __init__(self, device: Any = None, handle: int | None = None) -> None:
            self.cuda_stream = dev.new_stream_handle() if handle is None else handle

        def wait_stream(self, other: Stream) -> None:
            dev.log.append(("wait_stream", self.cuda_stream, other.cuda_stream))

        def synchronize(self) -> None:
            dev.log.append(("stream_sync", self.cuda_stream))

    caller = Stream(handle=0)  # the legacy default stream, as torch's current stream starts out
    current = [caller]

    @contextlib.contextmanager
    def stream(s: Stream) -> Iterator[None]:
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    @contextlib.contextmanager
    def graph(g: FakeGraph, stream: Stream | None = None, **_: Any) -> Iterator[None]:
        handle = (stream or current[-1]).cuda_stream
        dev.log.append(("capture_begin", handle))
        dev.capturing[handle] = g
        try:
            yield
        finally:
            del dev.capturing[handle]
            dev.log.append(("capture_end", handle))

    graph_cls = type("CUDAGraph", (FakeGraph,), {"device": device})
    return {
        "is_available": lambda: True,
        "current_device": lambda: 0,
        "Stream": Stream,
        "current_stream": lambda device=None: current[-1],
        "stream": stream,
        "CUDAGraph": graph_cls,
        "graph": graph,
    }


# -- pycuda -----------------------------------------------------------------------------------------------


class DeviceAllocation:
    """``pycuda.driver.DeviceAllocation``: ``int()`` gives the device address."""

    def __init__(self, device: FakeDevice, nbytes: int) -> None:
        self._backing = np.zeros(max(nbytes, 1), dtype=np.uint8)
        self.address = device.register(self._backing, self._backing.ctypes.data, nbytes)

    def __int__(self) -> int:
        return self.address


def fake_pycuda_modules(device: FakeDevice) -> dict[str, types.ModuleType]:
    """``pycuda``, ``pycuda.driver`` and ``pycuda.autoprimaryctx`` for ``sys.modules`` (no ``autoinit``: the
    demo must share the primary context, so importing ``pycuda.autoinit`` fails here)."""
    dev = device

    class Stream:
        def __init__(self) -> None:
            self.handle = dev.new_stream_handle()

        def synchronize(self) -> None:
            dev.log.append(("stream_sync", self.handle))

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        dev.log.append(("pagelocked_empty", tuple(shape), np.dtype(dtype).name))
        return np.empty(shape, dtype=dtype)

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        dev.log.append(("mem_alloc", int(nbytes)))
        return DeviceAllocation(dev, int(nbytes))

    def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
        dev.write(int(dest), src, "memcpy_htod_async")
        dev.log.append(("htod", int(dest), src.nbytes, stream.handle))

    def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
        dest[...] = dev.read(int(src), dest.shape, dest.dtype, "memcpy_dtoh_async")
        dev.log.append(("dtoh", int(src), dest.nbytes, stream.handle))

    driver = types.ModuleType("pycuda.driver")
    for fn in (Stream, pagelocked_empty, mem_alloc, memcpy_htod_async, memcpy_dtoh_async):
        setattr(driver, fn.__name__, fn)
    driver.DeviceAllocation = DeviceAllocation
    package = types.ModuleType("pycuda")
    package.__path__ = []  # a package, so `import pycuda.driver` resolves through sys.modules
    autoprimaryctx = types.ModuleType("pycuda.autoprimaryctx")
    package.driver, package.autoprimaryctx = driver, autoprimaryctx
    return {"pycuda": package, "pycuda.driver": driver, "pycuda.autoprimaryctx": autoprimaryctx}
