"""serving.cpu_budget: the CPUs a process may use (fake cgroup trees) and how they are shared out."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cpu_budget import cgroup_quota, cpu_limit, split_budget


def _tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text + "\n")
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    return root, proc


def test_cgroup_v2_quota_of_this_process_cgroup(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "150000 100000"})
    quota, source = cgroup_quota(root, proc)
    assert quota == 1.5 and source.endswith("c1/cpu.max")
    limit = cpu_limit(affinity=8, root=root, proc_self_cgroup=proc)
    assert limit.cpus == 1  # 1.5 CPUs -> one whole CPU
    assert "cgroup quota 1.5 CPUs" in limit.describe()


def test_a_tighter_parent_quota_binds_its_children(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        {"kubepods/pod1/cpu.max": "200000 100000", "kubepods/pod1/c1/cpu.max": "max 100000"},
    )
    assert cgroup_quota(root, proc)[0] == 2.0
    assert cpu_limit(affinity=16, root=root, proc_self_cgroup=proc).cpus == 2


def test_no_quota_means_the_affinity_mask(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000"})
    assert cgroup_quota(root, proc)[0] is None
    assert cpu_limit(affinity=3, root=root, proc_self_cgroup=proc).cpus == 3
    assert cpu_limit(affinity=2, root=tmp_path / "nowhere", proc_self_cgroup=tmp_path / "none").cpus == 2


def test_affinity_smaller_than_the_quota_wins(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "800000 100000"})
    assert cpu_limit(affinity=2, root=root, proc_self_cgroup=proc).cpus == 2


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
    }
    root, proc = _tree(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", files)
    assert cgroup_quota(root, proc) == (3.0, str(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us"))
    # inside the container the hierarchy is mounted at its own cgroup: the files sit at the mount root
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path / "inside", "3:cpu:/docker/abc\n", files)
    assert cgroup_quota(root, proc)[0] is None


@pytest.mark.parametrize(
    ("total", "instances", "intra", "decode"),
    [
        (1, 1, 1, 1),
        (2, 1, 1, 1),
        (2, 2, 1, 1),
        (3, 1, 2, 1),
        (4, 1, 2, 1),
        (8, 1, 4, 3),
        (8, 2, 2, 3),
        (16, 3, 2, 7),
    ],
)
def test_cpu_split_gives_ort_and_decode_their_shares(
    total: int, instances: int, intra: int, decode: int
) -> None:
    budget = split_budget(total, instances=instances)
    assert (budget.intra_op_threads, budget.decode_workers) == (intra, decode)
    pools = instances * budget.intra_op_threads + budget.decode_workers
    if total >= 4:  # the split never oversubscribes once there is a core for the loop
        assert pools + budget.event_loop <= total and not budget.overlap
    elif pools <= total:  # below that only the event loop shares a core, and the split says so
        assert budget.overlap and "the event loop shares their cores" in budget.describe()
    else:  # 1 CPU, or more instances than cores
        assert budget.overlap and "the pools overlap" in budget.describe()


def test_on_cuda_decoding_gets_the_cores_the_gpu_frees() -> None:
    budget = split_budget(16, instances=2, on_cuda=True)
    assert (budget.intra_op_threads, budget.decode_workers) == (1, 13)
    assert "2 instance(s) x 1 intra-op" in budget.describe()


def test_explicit_flags_win_and_gauges_name_every_part() -> None:
    budget = split_budget(8, intra_op_threads=6, decode_workers=2)
    assert (budget.intra_op_threads, budget.decode_workers) == (6, 2)
    assert budget.as_gauges() == {
        "total": 8, "ort_intra_op_per_instance": 6, "ort_instances": 1, "decode_workers": 2, "event_loop": 1,
    }  # fmt: skip
    with pytest.raises(ValueError):
        split_budget(0)


def test_the_split_is_exported_as_prometheus_gauges() -> None:
    from serving.metrics import ServerMetrics

    metrics = ServerMetrics()
    metrics.thread_budget(split_budget(8, instances=2).as_gauges())
    text = metrics.render().decode()
    assert 'lumen_cpu_threads{part="total"} 8.0' in text
    assert 'lumen_cpu_threads{part="ort_intra_op_per_instance"} 2.0' in text
    assert 'lumen_cpu_threads{part="decode_workers"} 3.0' in text
