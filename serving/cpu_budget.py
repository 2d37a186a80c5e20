"""One CPU thread budget for the server, from the cores this process may really use.

``os.cpu_count()`` is the host's core count: in a container limited to 2 CPUs on a 64-core host it
says 64, and every thread pool sized from it (ORT's intra-op pool per session, the decode pool)
oversubscribes the quota, which the kernel then enforces by throttling the whole process. The
budget is the smallest of

- the CPUs in this process's affinity mask (``os.sched_getaffinity``: taskset, cpusets),
- the cgroup CPU quota: v2 ``cpu.max`` (``"200000 100000"`` = 2 CPUs; ``max`` = none) of this
  process's cgroup and every ancestor, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,

rounded down to whole CPUs (at least 1): a thread on a fractional CPU would be throttled part of
every period. The split (:func:`split_budget`) gives ONNX Runtime and the decode pool their shares
and, from 4 CPUs, leaves the event loop its own thread.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CpuLimit:
    """What bounds this process: the affinity mask and the cgroup quota (None = no quota)."""

    affinity: int
    quota: float | None
    source: str

    @property
    def cpus(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.floor(self.quota)))

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs ({self.source})"
        return f"affinity {self.affinity} CPUs, cgroup quota {quota}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path, root: Path) -> tuple[float, Path] | None:
    """The tightest ``cpu.max`` from ``directory`` up to ``root`` (a parent's limit binds its children)."""
    best: tuple[float, Path] | None = None
    current = directory
    while True:
        text = _read(current / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and period:
                cpus = int(quota) / int(period)
                if best is None or cpus < best[0]:
                    best = (cpus, current / "cpu.max")
        if current == root or root not in current.parents:
            return best
        current = current.parent


def _v1_quota(relative: str, root: Path) -> tuple[float, Path] | None:
    for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        base = root / mount
        # Inside a container the v1 hierarchy is usually mounted at the container's own cgroup.
        for directory in (base / relative.lstrip("/"), base):
            quota = _read(directory / "cpu.cfs_quota_us")
            period = _read(directory / "cpu.cfs_period_us")
            if quota is None or period is None:
                continue
            if int(quota) <= 0:
                return None
            return int(quota) / int(period), directory / "cpu.cfs_quota_us"
    return None


def cgroup_quota(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> tuple[float, str] | tuple[None, str]:
    """``(CPUs, the file it came from)`` of this process's cgroup CPU quota, ``(None, why)`` without one."""
    text = _read(proc_self_cgroup)
    if text is None:
        return None, f"{proc_self_cgroup} unreadable"
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            directory = root / relative.lstrip("/")
            found = _v2_quota(directory if directory.is_dir() else root, root)
            if found is not None:
                return found[0], str(found[1])
        elif "cpu" in controllers.split(","):  # cgroup v1
            found = _v1_quota(relative, root)
            if found is not None:
                return found[0], str(found[1])
    return None, "no cgroup CPU quota"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (where the OS has none, e.g. macOS: the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_limit(
    affinity: int | None = None, root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> CpuLimit:
    """The CPUs this process may use (the paths and the affinity count are parameters for tests)."""
    quota, source = cgroup_quota(root, proc_self_cgroup)
    return CpuLimit(affinity=affinity_cpus() if affinity is None else affinity, quota=quota, source=source)


def usable_cpus() -> int:
    """Whole CPUs this process may use: affinity and cgroup quota, never the host's core count."""
    return cpu_limit().cpus


@dataclass(frozen=True)
class ThreadBudget:
    """How ``total`` CPU threads are shared out; also exported as the ``lumen_cpu_threads`` gauges."""

    total: int
    instances: int
    intra_op_threads: int
    """ONNX Runtime intra-op threads per instance (``instances`` of them compute at once)."""
    decode_workers: int
    event_loop: int = 1

    @property
    def pools(self) -> int:
        """Threads ONNX Runtime and the decode pool may run at once."""
        return self.instances * self.intra_op_threads + self.decode_workers

    @property
    def overlap(self) -> bool:
        """True when the pools and the event loop want more threads than ``total`` (below 4 CPUs the
        event loop shares the pools' cores; with 1 CPU, or more instances than cores, the pools share too)."""
        return self.pools + self.event_loop > self.total

    def describe(self) -> str:
        shared = ""
        if self.pools > self.total:
            shared = ", the pools overlap"
        elif self.overlap:
            shared = ", the event loop shares their cores"
        return (
            f"{self.total} CPU threads: ONNX Runtime {self.instances} instance(s) x {self.intra_op_threads} "
            f"intra-op thread(s), {self.decode_workers} decode worker(s), {self.event_loop} event loop{shared}"
        )

    def as_gauges(self) -> dict[str, int]:
        return {
            "total": self.total,
            "ort_intra_op_per_instance": self.intra_op_threads,
            "ort_instances": self.instances,
            "decode_workers": self.decode_workers,
            "event_loop": self.event_loop,
        }


def split_budget(
    total: int,
    *,
    instances: int = 1,
    on_cuda: bool = False,
    intra_op_threads: int | None = None,
    decode_workers: int | None = None,
) -> ThreadBudget:
    """Share ``total`` threads between ONNX Runtime, decoding and the event loop.

    CPU: decoding a clip costs about as much as the small CNNs' inference on it
    (benchmarks/RESULTS.md), so decode workers get half and ORT the other half, divided among the
    instances that compute at once; from 4 threads the event loop first gets its own, below that it
    shares (it needs ~1 ms per request, a core would idle). Nothing else oversubscribes: on 2 CPUs
    (1 ORT thread + 1 decode worker) a quiet machine measured 8-15 % less CPU per request than
    letting both pools use both cores, and as many requests/s (RESULTS.md, issue 16). CUDA: the GPU
    computes, an instance needs one CPU thread to launch kernels, decoding gets the rest.
    Explicit ``intra_op_threads`` / ``decode_workers`` (the command-line flags) win over the split.
    """
    if total < 1 or instances < 1:
        raise ValueError(f"need total >= 1 and instances >= 1, got {total}, {instances}")
    workers = total if total < 4 else total - 1  # the event loop's own thread, when there are cores to spare
    if on_cuda:
        auto_intra = 1  # launching kernels and waiting for the device: decoding may use every core
        auto_decode = total if total < 4 else max(1, workers - instances)
    else:
        auto_decode = max(1, workers // 2)
        auto_intra = max(1, (workers - auto_decode) // instances)
    return ThreadBudget(
        total=total,
        instances=instances,
        intra_op_threads=intra_op_threads or auto_intra,
        decode_workers=decode_workers or auto_decode,
    )
