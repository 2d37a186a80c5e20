"""serving.runtime: provider choice, contract checks at load, inference against a numpy twin."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import serving_testkit as kit

from common.artifact import ArtifactError
from common.audio import split_windows
from serving.runtime import CPU_PROVIDER, CUDA_PROVIDER, OnnxModel, parse_device, select_providers

CPU_ONLY = ["AzureExecutionProvider", CPU_PROVIDER]
WITH_CUDA = ["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]


def test_cpu_device_selects_cpu_only() -> None:
    assert select_providers("cpu", WITH_CUDA) == [CPU_PROVIDER]


def test_cuda_available_comes_first_with_its_device_id() -> None:
    providers = select_providers("cuda:1", WITH_CUDA)
    name, options = providers[0]
    assert (name, options["device_id"]) == (CUDA_PROVIDER, 1)
    assert providers[1:] == [CPU_PROVIDER]
    assert select_providers("cuda", WITH_CUDA)[0][1]["device_id"] == 0


def test_cuda_unavailable_falls_back_to_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        assert select_providers("cuda:0", CPU_ONLY) == [CPU_PROVIDER]
    assert "cuda:0 requested" in caplog.text and "onnxruntime-gpu" in caplog.text


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "cpu:0", "", "cuda:0:1"])
def test_bad_device_strings_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid device"):
        parse_device(bad)


def test_model_loads_metadata_and_matches_its_numpy_twin(tmp_path: Path) -> None:
    model = OnnxModel(kit.build_model(tmp_path / "tone.onnx"), intra_op_threads=1)
    assert model.metadata == kit.metadata()
    assert model.active_providers == [CPU_PROVIDER]
    windows = split_windows(kit.tones([1, 4]), kit.WINDOW, kit.HOP).audio
    probs = model.run(windows)
    np.testing.assert_allclose(probs, kit.reference_probs(windows), atol=1e-5)
    assert (probs[:, [1, 4]] > 0.99).all() and (np.delete(probs, [1, 4], axis=1) < 0.1).all()


def test_warmup_runs_every_batch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = OnnxModel(kit.build_model(tmp_path / "tone.onnx"))
    seen: list[int] = []
    run = model.run
    monkeypatch.setattr(model, "run", lambda w: seen.append(len(w)) or run(w))
    model.warmup([4, 1, 4, 2])
    assert seen == [1, 2, 4]


def test_run_rejects_windows_of_the_wrong_length(tmp_path: Path) -> None:
    model = OnnxModel(kit.build_model(tmp_path / "tone.onnx"))
    with pytest.raises(ValueError, match=f"\\[B >= 1, {kit.WINDOW}\\]"):
        model.run(np.zeros((2, kit.WINDOW + 1), np.float32))


def _without_metadata(path: Path) -> Path:
    proto = onnx.load(path)
    del proto.metadata_props[:]
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a model") and p, "cannot load as an ONNX model"),
        (lambda p: p, "file not found"),
        (lambda p: _without_metadata(kit.build_model(p)), "no lumen metadata"),
        (lambda p: kit.build_model(p, input_name="audio"), "graph input 'waveform' missing"),
        (lambda p: kit.build_model(p, fixed_batch=1), "fixed batch size 1"),
        (lambda p: kit.build_model(p, window=800), "takes 800 samples but metadata window_samples = 1600"),
        (
            lambda p: kit.build_model(p, kit.metadata(labels=["cel", "cla"], thresholds=[0.5, 0.5])),
            "2 labels",
        ),
    ],
    ids=["garbage", "missing", "no-metadata", "input-name", "fixed-batch", "window", "label-count"],
)
def test_contract_violations_name_the_file(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "broken.onnx"
    make(path)
    with pytest.raises(ArtifactError, match=message) as info:
        OnnxModel(path)
    assert str(path) in str(info.value)


def test_a_cuda_model_on_a_cpu_only_build_runs_on_the_cpu_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: CPU_ONLY)
    with caplog.at_level(logging.INFO, logger="serving.runtime"):
        model = OnnxModel(kit.build_model(tmp_path / "tone.onnx"), device="cuda:0")
    assert model.active_providers == [CPU_PROVIDER] and not model.on_cuda
    assert "active providers ['CPUExecutionProvider']" in caplog.text
    assert "requested but this onnxruntime has no CUDAExecutionProvider" in caplog.text
