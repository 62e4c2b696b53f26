"""Resolve how many threads the kernels use: one rule for the whole package."""
import os

from .errors import Error


def available_cores():
    """Cores this process may run on (affinity-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads=None):
    """threads=None: OMP_NUM_THREADS if set, else every available core; N >= 1: N."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        if env:
            try:
                value = int(env)
            except ValueError:
                value = 0
            if value >= 1:
                return value
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise Error(f"threads must be None or an int >= 1, got {threads!r}")
    return threads
