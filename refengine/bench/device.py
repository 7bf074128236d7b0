"""What the device is and what it holds: its name, its copy bandwidth, and peak memory during a run.

Peak memory is sampled by a background thread (every 50 ms, and once at the end):
    CuPy   pool_peak_bytes         CuPy's default memory pool, bytes it holds (the pool keeps what it ever
                                   needed at once, so this is its high-water mark; CUDA-graph pools apart)
           device_used_peak_bytes  total − free device memory (everything: weights, KV cache, graph pools,
                                   cuBLAS workspaces, other processes on the GPU)
    NumPy  rss_peak_bytes          the process's resident memory (weights and KV cache live in RAM)
"""

from __future__ import annotations

import os
import threading

import numpy as np

SAMPLE_SECONDS = 0.05
COPY_BYTES = 1 << 30


def is_gpu(xp) -> bool:
    return xp is not np


def device_name(xp) -> str:
    if not is_gpu(xp):
        import platform
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    return props["name"].decode(errors="replace")


def copy_bandwidth_gbps(xp) -> float | None:
    """Device-to-device copy rate, bytes read + written per second / 1e9 (tools/bench_kernels.py's ceiling:
    a 1 GiB memcpy, median of 5 timed with CUDA events). None on the CPU."""
    if not is_gpu(xp):
        return None
    cp = xp
    src, dst = cp.ones(COPY_BYTES, cp.uint8), cp.empty(COPY_BYTES, cp.uint8)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(6):
        start.record()
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, COPY_BYTES, cp.cuda.runtime.memcpyDeviceToDevice,
                                    cp.cuda.get_current_stream().ptr)
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    del src, dst
    cp.get_default_memory_pool().free_all_blocks()
    return 2 * COPY_BYTES / float(np.median(times[1:])) / 1e6


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB; the lifetime peak


class PeakMemory:
    """with PeakMemory(xp) as peak: ...   then peak.result() -> {name: bytes} (see the module docstring)."""

    def __init__(self, xp):
        self.xp = xp
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refengine-bench-memory", daemon=True)

    def sample(self) -> None:
        if is_gpu(self.xp):
            free, total = self.xp.cuda.runtime.memGetInfo()
            now = {"pool_peak_bytes": int(self.xp.get_default_memory_pool().total_bytes()),
                   "device_used_peak_bytes": int(total) - int(free)}
        else:
            now = {"rss_peak_bytes": _rss_bytes()}
        for k, v in now.items():
            self.peak[k] = max(v, self.peak.get(k, 0))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict[str, int]:
        return dict(self.peak)
