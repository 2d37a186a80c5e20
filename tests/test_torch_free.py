"""``common`` and ``serving`` import without torch, and without anything the serving image lacks.

The serving image is ``pip install .[cpu]`` (numpy, soundfile, soxr, msgspec, litestar, onnxruntime):
no torch and none of the ``train``/``synth`` extras. Each test imports every module of both packages in
a fresh interpreter where those packages cannot be imported at all. The module list is walked with
pkgutil, so modules added later are covered without touching this file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "serving")
TORCH_FAMILY = ("torch", "torchaudio", "torchvision", "lightning", "pytorch_lightning", "lightning_fabric")
# Top-level modules of the train and synth extras in pyproject.toml: absent from the serving image.
TRAIN_EXTRAS = (
    *TORCH_FAMILY,
    "torchmetrics",
    "timm",
    "transformers",
    "onnx",
    "onnxscript",
    "tensorboard",
    "matplotlib",
    "sklearn",
    "pretty_midi",
    "fluidsynth",
)

PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys, traceback

    BLOCKED = set(sys.argv[1].split(","))
    PACKAGES = sys.argv[2].split(",")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by test_torch_free)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    failures, imported = [], []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        imported.append(package_name)
        walk = pkgutil.walk_packages(package.__path__, prefix=package_name + ".", onerror=failures.append)
        for info in sorted(walk, key=lambda m: m.name):
            try:
                importlib.import_module(info.name)
                imported.append(info.name)
            except Exception:
                failures.append(f"{info.name}:\\n{traceback.format_exc(limit=-3)}")
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print("imported:", " ".join(imported))
    for failure in failures:
        print("FAILED", failure)
    if leaked:
        print("LEAKED", leaked)
    sys.exit(1 if failures or leaked else 0)
    """
)


def import_everything_without(blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(blocked), ",".join(PACKAGES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "blocked",
    [pytest.param(TORCH_FAMILY, id="torch"), pytest.param(TRAIN_EXTRAS, id="train-extras")],
)
def test_common_and_serving_import_without(blocked: tuple[str, ...]) -> None:
    result = import_everything_without(blocked)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    imported = result.stdout.split("imported:", 1)[1].split()
    assert {"common.audio", "common.datasets", "common.metrics", "common.artifact"} <= set(imported)


def test_the_blocker_really_blocks() -> None:
    # Guards the guard: with a module of the probe itself blocked, the probe must fail.
    result = import_everything_without(("numpy",))
    assert result.returncode != 0
    assert "blocked by test_torch_free" in result.stdout
