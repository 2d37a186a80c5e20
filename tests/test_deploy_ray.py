"""deploy/ray-cluster.yaml stays in step with lumen-test: no Kubernetes runs here, so check what can be.

The RayJob's entrypoint must parse with the real CLI and ask for the ray engine on the cluster it
runs in; every path it names must sit on the volume the pods mount; the GPU actors it asks for must
exist; the image it builds must name extras that pyproject.toml defines.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import yaml

from serving.evaluate_cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "ray-cluster.yaml"


def _job() -> dict:
    (job,) = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    return job


def _mounts(template: dict) -> dict[str, dict]:
    (container,) = template["spec"]["containers"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]}
    return {m["mountPath"]: {**m, "claim": claims[m["name"]]} for m in container["volumeMounts"]}


def _under(path: str, mounts: dict[str, dict]) -> dict | None:
    for mount_path, mount in mounts.items():
        if PurePosixPath(path).is_relative_to(mount_path):
            return mount
    return None


def test_entrypoint_is_lumen_test_on_the_ray_engine_of_this_cluster() -> None:
    argv = shlex.split(_job()["spec"]["entrypoint"])
    assert argv[0] == "lumen-test"
    args = build_parser().parse_args(argv[1:])
    assert args.engine == "ray"
    assert args.ray_address == "auto"  # the job's driver joins the cluster it runs on
    assert args.resume  # a retried job (backoffLimit) continues instead of starting over
    assert _job()["spec"]["backoffLimit"] >= 1


def test_every_path_is_on_the_shared_volume_where_each_pod_needs_it() -> None:
    spec = _job()["spec"]
    args = build_parser().parse_args(shlex.split(spec["entrypoint"])[1:])
    cluster = spec["rayClusterSpec"]
    head = _mounts(cluster["headGroupSpec"]["template"])
    data = [spec_text.partition(":")[2] or spec_text for spec_text in args.dataset_paths]
    for path in [str(args.model), str(args.out_dir), *data]:
        mount = _under(path, head)
        assert mount is not None, f"the driver cannot see {path}"
    assert not _under(str(args.out_dir), head).get("readOnly", False)  # the journal is written there
    for group in cluster["workerGroupSpecs"]:
        workers = _mounts(group["template"])
        for path in data:  # decode tasks run on every worker that has CPUs
            mount = _under(path, workers)
            assert mount is not None and mount["claim"] == _under(path, head)["claim"], group["groupName"]


def test_gpu_actors_fit_the_gpu_workers_and_the_head_only_drives() -> None:
    spec = _job()["spec"]
    args = build_parser().parse_args(shlex.split(spec["entrypoint"])[1:])
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        gpus += group["replicas"] * int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert args.device.startswith("cuda")
    assert 1 <= args.num_workers <= gpus


def test_the_image_build_names_extras_that_exist() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = re.findall(r"EXTRA=([\w,-]+)", MANIFEST.read_text())
    assert named
    for value in named:
        assert set(value.split(",")) <= extras, value
    assert any("ray-cluster" in value.split(",") for value in named)
