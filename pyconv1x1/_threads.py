"""Resolve how many threads the kernels use: one rule for the whole package."""
import math
import os

from .errors import Error

MAX_THREADS = 1024  # the kernels' worker pool holds at most this many (caller included)
CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_cpu_limit(root=None):
    """CPUs the cgroup CPU quota allows (ceil of quota / period), or None: cgroup v2
    `cpu.max` ("max 100000" or "200000 100000"), else v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (quota -1: none). Containers (Docker --cpus, Kubernetes
    limits) set these while the affinity mask still shows every host core."""
    root = CGROUP_ROOT if root is None else root
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = (f.read().split() + ["100000"])[:2]
        if quota == "max":
            return None
        quota, period = int(quota), int(period)
    except (OSError, ValueError):
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
                quota = int(f.read())
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                period = int(f.read())
        except (OSError, ValueError):
            return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def available_cores():
    """Cores this process may use: its CPU affinity mask (taskset, numactl, a container's
    cpuset), capped by the cgroup CPU quota where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, limit)
    return max(1, min(cores, MAX_THREADS))


def resolve_threads(threads=None):
    """threads=None: OMP_NUM_THREADS if set (the conventional variable; the kernels do
    not use OpenMP), else every available core; N in 1 .. MAX_THREADS: N."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        if env:
            try:
                value = int(env)
            except ValueError:
                value = 0
            if value >= 1:
                return min(value, MAX_THREADS)
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) \
            or not 1 <= threads <= MAX_THREADS:
        raise Error(f"threads must be None or an int from 1 to {MAX_THREADS}, got "
                    f"{threads!r}")
    return threads
