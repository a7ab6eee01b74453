"""CPU and memory from /proc, GPU utilisation and memory through NVML when it is there.

Every reader degrades to a short explanation instead of raising: the device panel is a
nicety and must never take the TUI down (no /proc on macOS, no NVIDIA driver, no GPU). NVML comes
with `nvidia-ml-py`, a dependency, so a machine with a GPU shows it without an extra step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class GpuReading:
    name: str
    utilization: float  # percent
    memory_used: int  # bytes
    memory_total: int


def read_cpu_times(stat_path: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from the aggregate `cpu` line."""
    try:
        first = stat_path.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuSampler:
    """CPU use in percent between successive calls."""

    def __init__(self, stat_path: Path = Path("/proc/stat")):
        self.stat_path = stat_path
        self.previous = read_cpu_times(stat_path)

    def sample(self) -> float | None:
        current = read_cpu_times(self.stat_path)
        if current is None or self.previous is None:
            self.previous = current
            return None
        busy = current[0] - self.previous[0]
        total = current[1] - self.previous[1]
        self.previous = current
        return 100.0 * busy / total if total > 0 else 0.0


def read_memory(meminfo_path: Path = Path("/proc/meminfo")) -> tuple[int, int] | None:
    """(used, total) bytes, used meaning total − MemAvailable."""
    try:
        fields = {}
        for line in meminfo_path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[key] = int(parts[0]) * 1024  # kB
    except (OSError, ValueError):
        return None
    if "MemTotal" not in fields:
        return None
    available = fields.get("MemAvailable", fields.get("MemFree", 0))
    return fields["MemTotal"] - available, fields["MemTotal"]


NO_GPU = "No GPU on this machine"
NO_DRIVER = "No GPU on this machine (no NVIDIA driver)"


class GpuReader:
    """NVML readings, or `why` saying why there are none. NVML is initialised once, lazily."""

    def __init__(self) -> None:
        self.why: str | None = None
        self._nvml = None
        self._handles: list = []
        self._started = False

    def _start(self) -> None:
        self._started = True
        try:
            import pynvml  # nvidia-ml-py, a dependency
        except ImportError:
            self.why = "GPU: not shown (nvidia-ml-py is missing; reinstall workbench)"
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # no driver, no GPU, permission: all mean "no readings"
            name = type(exc).__name__
            self.why = (NO_DRIVER if name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
                        else f"No GPU readings (NVML: {name})")
            return
        if not self._handles:
            self.why = NO_GPU
            return
        self._nvml = pynvml

    def read(self) -> list[GpuReading]:
        if not self._started:
            self._start()
        if self._nvml is None:
            return []
        readings = []
        try:
            for handle in self._handles:
                name = self._nvml.nvmlDeviceGetName(handle)
                utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                readings.append(GpuReading(
                    name.decode() if isinstance(name, bytes) else str(name),
                    float(utilization), int(memory.used), int(memory.total),
                ))
        except Exception as exc:
            self.why = f"GPU: reading failed ({type(exc).__name__})"
            self._nvml = None
            return []
        return readings


def gibibytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
