"""Resolve how many threads the kernels use: one rule for the whole package."""
import os

from . import resources
from .errors import Error
from .resources import MAX_THREADS, cgroup_cpu_limit as _cgroup_cpu_limit  # noqa: F401

CGROUP_ROOT = resources.CGROUP_ROOT  # (tests point it elsewhere)


def available_cores():
    """Cores this process may use (resources.available_cores)."""
    return resources.available_cores(CGROUP_ROOT)


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
