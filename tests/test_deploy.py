"""The deployment files stay in step with the code: no container engine runs here, so check what can be.

The Dockerfile's and the Kubernetes manifest's lumen-serve arguments must parse with the real CLI,
the probes must hit endpoints the app serves, and everything the image copies must exist.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from serving.app import create_app
from serving.cli import build_parser, settings_from_args

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _exec_form(instructions: list[tuple[str, str]], name: str) -> list[str]:
    (value,) = [v for k, v in instructions if k == name]
    return json.loads(value)


def _container() -> dict:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_image_entrypoint_and_manifest_args_parse_with_lumen_serve() -> None:
    instructions = _dockerfile_instructions()
    entrypoint = _exec_form(instructions, "ENTRYPOINT")
    assert entrypoint[0] == "lumen-serve"
    for args in (_exec_form(instructions, "CMD"), _container()["args"]):
        parsed = build_parser().parse_args(entrypoint[1:] + args)
        settings_from_args(parsed)
        assert parsed.host == "0.0.0.0"  # reachable from outside the container
        assert str(parsed.model_dir) == "/models"


def test_image_copies_only_what_exists_and_installs_no_torch() -> None:
    instructions = _dockerfile_instructions()
    for key, value in instructions:
        if key == "COPY":
            *sources, _dest = shlex.split(value)
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    run = " ".join(v for k, v in instructions if k == "RUN")
    assert re.search(r'pip install "\.\[\$\{EXTRA\}\]"', run)
    assert ("ARG", "EXTRA=cpu") in instructions  # the default image is the CPU one
    assert ("USER", "10001") in instructions  # non-root


def test_probes_hit_the_health_and_readiness_endpoints() -> None:
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names["http"] == 8090
    parsed = build_parser().parse_args(["--model-dir", "/models"])
    paths = set(create_app(settings_from_args(parsed)).route_handler_method_map)
    assert {"/health", "/ready"} <= paths


BASELINE_MIB = 512  # Python + ONNX Runtime + a few small artifacts, measured well below this


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_memory_limit_covers_the_worst_case_of_the_admission_limits() -> None:
    container = _container()
    settings = settings_from_args(build_parser().parse_args(["--host", "0.0.0.0", *container["args"]]))
    worst = BASELINE_MIB + settings.max_concurrent_requests * (
        settings.max_upload_mb + settings.max_request_mb
    )
    assert _mib(container["resources"]["limits"]["memory"]) >= worst


def test_the_thread_budget_follows_the_container_cpu_limit() -> None:
    container = _container()
    (env,) = [e for e in container["env"] if e["name"] == "LUMEN_CPU_THREADS"]
    assert env["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "--intra-op-threads" not in container["args"]  # the budget splits the limit, no fixed pool
    assert float(container["resources"]["limits"]["cpu"]) >= 1
