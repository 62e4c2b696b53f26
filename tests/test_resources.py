"""resources.py: one cgroup reader for the CPU quota and the memory limit, reading the
process's own cgroup (from /proc/self/cgroup) and its ancestors; the lowest limit binds."""
from pyconv1x1 import resources


def _own(monkeypatch, v2="/", v1="/"):
    monkeypatch.setattr(resources, "_own_cgroup_paths", lambda controller: (v2, v1))


def test_the_own_cgroup_quota_binds_where_the_root_has_none(tmp_path, monkeypatch):
    _own(monkeypatch, v2="/slice/job")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "slice" / "job").mkdir(parents=True)
    (tmp_path / "slice" / "job" / "cpu.max").write_text("300000 100000\n")
    assert resources.cgroup_cpu_limit(str(tmp_path)) == 3
    (tmp_path / "slice" / "cpu.max").write_text("100000 100000\n")  # a parent binds too
    assert resources.cgroup_cpu_limit(str(tmp_path)) == 1


def test_the_memory_limit_is_the_lowest_of_the_cgroup_and_its_parents(tmp_path,
                                                                        monkeypatch):
    _own(monkeypatch, v2="/slice/job")
    (tmp_path / "slice" / "job").mkdir(parents=True)
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "slice" / "memory.max").write_text(f"{1 << 30}\n")
    (tmp_path / "slice" / "job" / "memory.max").write_text("max\n")
    assert resources.cgroup_memory_limit(str(tmp_path)) == 1 << 30


def test_v1_files_are_read_where_no_v2_file_exists(tmp_path, monkeypatch):
    _own(monkeypatch, v1="/docker/abc")
    folder = tmp_path / "memory" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text("2147483648\n")
    assert resources.cgroup_memory_limit(str(tmp_path)) == 2147483648
    assert resources.cgroup_cpu_limit(str(tmp_path)) is None  # no cpu files at all


def test_a_container_whose_cgroup_is_its_root_reads_the_root(tmp_path, monkeypatch):
    _own(monkeypatch, v2="/docker/abc")  # (the host's path: absent inside the container)
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    (tmp_path / "memory.max").write_text("1048576\n")
    assert resources.cgroup_cpu_limit(str(tmp_path)) == 3
    assert resources.cgroup_memory_limit(str(tmp_path)) == 1048576


def test_a_path_never_leaves_the_cgroup_root(tmp_path, monkeypatch):
    _own(monkeypatch, v2="/../../etc")
    assert resources._ancestors("/../../etc") == ["etc", ""]
    assert resources.cgroup_cpu_limit(str(tmp_path)) is None


def test_machine_memory_is_positive_and_at_most_physical():
    physical = resources.physical_memory()
    assert 0 < resources.machine_memory() <= (physical or 1 << 36)
