"""What this machine lets the process use: cores (affinity mask, cgroup CPU quota) and
memory (physical, cgroup memory limit). One cgroup reader serves both: it reads the
limits of the process's own cgroup (from /proc/self/cgroup) and of every ancestor up to
the root, cgroup v2 files first, else v1, and the lowest limit binds. Inside a container
whose cgroup is its root folder the own path is missing and the root's files are read."""
import math
import os

CGROUP_ROOT = "/sys/fs/cgroup"
MAX_THREADS = 1024  # the kernels' worker pool holds at most this many (caller included)


def _own_cgroup_paths(controller):
    """(v2 path, v1 path of `controller`) of this process, '/' where unknown."""
    v2 = v1 = "/"
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path or "/"
        elif controller in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _ancestors(path):
    """'/a/b' -> ['a/b', 'a', ''] (relative folders, the process's own first)."""
    parts = [p for p in path.split("/") if p and p != ".."]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_limit(controller, v2_files, v1_files, parse, root=None):
    """The lowest limit `parse` reads from the cgroup files of `controller`: v2 files
    (in root/<path>) where any folder has them readable and parseable, else v1 files (in
    root/<controller>/<path>); None when unlimited or unknown. parse(*texts) returns a
    limit, None for 'no limit', or raises ValueError for a file it cannot read."""
    root = CGROUP_ROOT if root is None else root
    own_v2, own_v1 = _own_cgroup_paths(controller)
    for base, own, files in ((root, own_v2, v2_files),
                             (os.path.join(root, controller), own_v1, v1_files)):
        seen, limits = False, []
        for rel in _ancestors(own):
            folder = os.path.join(base, rel) if rel else base
            try:
                texts = []
                for name in files:
                    with open(os.path.join(folder, name)) as f:
                        texts.append(f.read())
                value = parse(*texts)
            except (OSError, ValueError):
                continue
            seen = True
            if value is not None:
                limits.append(value)
        if seen:
            return min(limits) if limits else None
    return None


def _parse_cpu_max(text):
    quota, period = (text.split() + ["100000"])[:2]
    if quota == "max":
        return None
    return _cpus(int(quota), int(period))


def _parse_cfs(quota, period):
    return _cpus(int(quota), int(period))


def _parse_cpu(*texts):
    return (_parse_cpu_max if len(texts) == 1 else _parse_cfs)(*texts)


def _cpus(quota, period):
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def cgroup_cpu_limit(root=None):
    """CPUs the cgroup CPU quota allows (ceil of quota / period), or None: cgroup v2
    `cpu.max` ("max 100000" or "200000 100000"), else v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (quota -1: none). Containers (Docker --cpus, Kubernetes
    limits) set these while the affinity mask still shows every host core."""
    return cgroup_limit("cpu", ("cpu.max",), ("cpu.cfs_quota_us", "cpu.cfs_period_us"),
                        _parse_cpu, root)


def _parse_memory(text):
    text = text.strip()
    return int(text) if text.isdigit() else None  # "max": none


def cgroup_memory_limit(root=None):
    """memory.max (cgroup v2) or memory.limit_in_bytes (v1) of this process's cgroup,
    or None when unlimited or unknown."""
    return cgroup_limit("memory", ("memory.max",), ("memory.limit_in_bytes",),
                        _parse_memory, root)


def available_cores(root=None):
    """Cores this process may use: its CPU affinity mask (taskset, numactl, a container's
    cpuset), capped by the cgroup CPU quota where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, limit)
    return max(1, min(cores, MAX_THREADS))


def physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


_MACHINE_MEMORY = []


def machine_memory():
    """Bytes this process may use: physical memory, or its cgroup's limit when lower
    (read once)."""
    if not _MACHINE_MEMORY:
        known = [n for n in (cgroup_memory_limit(), physical_memory()) if n]
        _MACHINE_MEMORY.append(min(known) if known else 1 << 36)
    return _MACHINE_MEMORY[0]
