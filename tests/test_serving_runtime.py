"""serving.runtime: provider choice, contract checks at load, inference against a numpy twin."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import serving_testkit as kit

from common.artifact import ArtifactError
from common.audio import split_windows
from serving.runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    BoundInstance,
    OnnxModel,
    bucket_for,
    bucket_sizes,
    default_instances,
    fp16_sibling,
    parse_device,
    select_providers,
)

REAL_SESSION = onnxruntime.InferenceSession
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
    monkeypatch.setattr(model, "run", lambda w, **kw: seen.append(len(w)) or run(w, **kw))
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


# ---- instances, device buffers, fp16 siblings, CUDA graphs (CUDA faked on a CPU session) --------------


def test_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert bucket_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert bucket_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert bucket_sizes(1) == [1]
    assert [bucket_for(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    with pytest.raises(ValueError, match=">= 1"):
        bucket_sizes(0)


def test_fp16_sibling_names() -> None:
    assert fp16_sibling(Path("m/best.onnx")) == Path("m/best.fp16.onnx")
    assert fp16_sibling(Path("m/best.fp16.onnx")) is None


def test_cuda_graphs_are_a_cuda_provider_option() -> None:
    (name, options), cpu = select_providers("cuda:0", WITH_CUDA, cuda_graph=True)
    assert (name, options["enable_cuda_graph"], cpu) == (CUDA_PROVIDER, "1", CPU_PROVIDER)
    assert "enable_cuda_graph" not in select_providers("cuda:0", WITH_CUDA)[0][1]
    assert default_instances("cpu") == 1 and default_instances("cuda:1") == 2


def test_bound_buffers_pad_to_a_bucket_and_stay_in_place(tmp_path: Path) -> None:
    """The CUDA I/O path (staging, padding, binding, one read-back) run on a CPU session."""
    session = onnxruntime.InferenceSession(kit.build_model(tmp_path / "tone.onnx"), providers=[CPU_PROVIDER])
    instance = BoundInstance(session, "cpu", 0, bucket_sizes(4), kit.WINDOW, len(kit.LABELS))
    assert instance.buckets == [1, 2, 4]
    addresses = {size: instance._buckets[size].input.data_ptr() for size in instance.buckets}
    rng = np.random.default_rng(0)
    for n in (4, 3, 1, 2, 4, 7):  # 3 pads into 4 after a full 4; 7 exceeds every bucket: split in 4 + 3
        windows = split_windows(kit.tones(kit.label_set(n), seconds=0.2 * n), kit.WINDOW, kit.WINDOW).audio[
            :n
        ]
        windows = windows + rng.normal(0, 1e-3, windows.shape).astype(np.float32)
        probs = instance.run(windows)
        assert probs.shape == (n, len(kit.LABELS))
        np.testing.assert_allclose(probs, kit.reference_probs(windows), atol=1e-5)
    assert {size: instance._buckets[size].input.data_ptr() for size in instance.buckets} == addresses


class FakeCudaSession:
    """A real CPU session that reports the CUDA EP as active when CUDA was asked for."""

    opened: list[tuple[str, list]] = []
    refuse_graphs = False

    def __init__(self, path, sess_options=None, providers=None) -> None:  # noqa: ANN001
        if self.refuse_graphs and any(
            isinstance(p, tuple) and "enable_cuda_graph" in p[1] for p in providers
        ):
            raise RuntimeError("graph capture is not supported: some nodes are on the CPU")
        FakeCudaSession.opened.append((str(path), providers))
        self._real = REAL_SESSION(path, sess_options=sess_options, providers=[CPU_PROVIDER])
        self._cuda = providers[0] != CPU_PROVIDER

    def get_providers(self) -> list[str]:
        return [CUDA_PROVIDER, CPU_PROVIDER] if self._cuda else [CPU_PROVIDER]

    def __getattr__(self, name: str):  # noqa: ANN204
        if name == "_real":
            raise AttributeError(name)
        return getattr(self._real, name)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> type[FakeCudaSession]:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: WITH_CUDA)
    monkeypatch.setattr("serving.runtime.ort.InferenceSession", FakeCudaSession)
    monkeypatch.setattr("serving.runtime.CUDA_DEVICE_TYPE", "cpu")
    monkeypatch.setattr(FakeCudaSession, "opened", [])
    monkeypatch.setattr(FakeCudaSession, "refuse_graphs", False)
    return FakeCudaSession


def _windows(n: int) -> np.ndarray:
    return split_windows(kit.tones([2, 7], seconds=0.2 * (n + 1)), kit.WINDOW, kit.HOP).audio[:n]


def test_on_cuda_each_instance_has_its_own_session_and_buffers(tmp_path: Path, fake_cuda) -> None:  # noqa: ANN001
    path = kit.build_model(tmp_path / "tone.onnx")
    model = OnnxModel(path, device="cuda:1", instances=2, max_batch_size=8)
    assert model.on_cuda and not model.share_session and model.instances == 2
    assert [providers[0][1]["device_id"] for _, providers in fake_cuda.opened] == [1, 1]
    sessions = [instance.session for instance in model._instances]
    assert sessions[0] is not sessions[1] and all(isinstance(i, BoundInstance) for i in model._instances)
    assert model._instances[0].buckets == [1, 2, 4, 8]
    for index, run in enumerate(model.runners):
        np.testing.assert_allclose(
            run(_windows(3 + index)), kit.reference_probs(_windows(3 + index)), atol=1e-5
        )
    with pytest.raises(ValueError, match="own session"):
        OnnxModel(path, device="cuda", instances=2, share_session=True)


def test_cpu_instances_share_one_session_unless_told_otherwise(tmp_path: Path) -> None:
    path = kit.build_model(tmp_path / "tone.onnx")
    shared = OnnxModel(path, instances=3, intra_op_threads=1)
    assert shared.share_session and len({id(i.session) for i in shared._instances}) == 1
    own = OnnxModel(path, instances=2, intra_op_threads=1, share_session=False)
    assert len({id(i.session) for i in own._instances}) == 2
    for model in (shared, own):
        for run in model.runners:
            np.testing.assert_allclose(run(_windows(2)), kit.reference_probs(_windows(2)), atol=1e-5)


def _fp16_sibling(path: Path, **overrides: object) -> Path:
    return kit.build_model(path.with_name(path.stem + ".fp16.onnx"), kit.metadata(**overrides))


def test_the_fp16_sibling_is_served_on_cuda_only(tmp_path: Path, fake_cuda) -> None:  # noqa: ANN001
    path = kit.build_model(tmp_path / "tone.onnx")
    sibling = _fp16_sibling(path)
    on_cuda = OnnxModel(path, device="cuda", instances=2)
    assert on_cuda.artifact == sibling and on_cuda.source == str(path)  # the id stays the fp32 file's
    assert [opened for opened, _ in fake_cuda.opened].count(str(sibling)) == 2  # one per instance
    assert OnnxModel(path, device="cpu").artifact == path
    assert OnnxModel(path, device="cuda", prefer_fp16=False).artifact == path


def test_an_fp16_file_from_another_checkpoint_is_not_used(
    tmp_path: Path,
    fake_cuda,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    path = kit.build_model(tmp_path / "tone.onnx")
    _fp16_sibling(path, source_checkpoint_sha256="ab" * 32)
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        model = OnnxModel(path, device="cuda")
    assert model.artifact == path and "not an export of the same checkpoint" in caplog.text


def test_cuda_graphs_get_one_graph_id_per_bucket_or_are_dropped_when_refused(
    tmp_path: Path,
    fake_cuda,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    path = kit.build_model(tmp_path / "tone.onnx")
    model = OnnxModel(path, device="cuda", cuda_graph=True, max_batch_size=4)
    assert model.cuda_graph
    buckets = model._instances[0]._buckets
    assert [buckets[s].run_options.get_run_config_entry("gpu_graph_id") for s in (1, 2, 4)] == ["1", "2", "3"]
    model.warmup([1, 2, 4])
    np.testing.assert_allclose(model.run(_windows(3)), kit.reference_probs(_windows(3)), atol=1e-5)

    fake_cuda.refuse_graphs = True
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        fallback = OnnxModel(path, device="cuda", cuda_graph=True)
    assert fallback.on_cuda and not fallback.cuda_graph and "CUDA graphs not possible" in caplog.text
    assert fallback._instances[0]._buckets[1].run_options is None


def test_pinned_staging_is_written_in_place_and_a_missing_api_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ORT can allocate host memory for the device, the batch is padded straight into it."""
    pinned_marker = object()
    allocate = onnxruntime.OrtValue.ortvalue_from_shape_and_type.__func__
    allocated: list[object] = []

    def fake_allocate(
        cls, shape, element_type, device_type="cpu", device_id=0, vendor_id=-1, memory_info=None
    ):  # noqa: ANN001, ANN202, E501
        if memory_info is pinned_marker:  # stands in for the CUDA EP's HOST_ACCESSIBLE memory
            value = allocate(cls, shape, element_type, "cpu", 0)
            allocated.append(value)
            return value
        return allocate(cls, shape, element_type, device_type, device_id)

    monkeypatch.setattr(onnxruntime.OrtValue, "ortvalue_from_shape_and_type", classmethod(fake_allocate))
    session = onnxruntime.InferenceSession(kit.build_model(tmp_path / "tone.onnx"), providers=[CPU_PROVIDER])
    bound = BoundInstance(
        session, "cpu", 0, [1, 4], kit.WINDOW, len(kit.LABELS), pinned_memory_info=pinned_marker
    )
    staging = bound._buckets[4].staging
    assert len(allocated) == 2 and staging.ctypes.data == bound._buckets[4].pinned.data_ptr()
    np.testing.assert_allclose(bound.run(_windows(3)), kit.reference_probs(_windows(3)), atol=1e-5)
    np.testing.assert_array_equal(staging[:3], _windows(3))  # padded in place, in the pinned rows
    assert not staging[3:].any()

    def no_api(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise TypeError("unexpected keyword argument 'memory_info'")

    monkeypatch.setattr(onnxruntime.OrtValue, "ortvalue_from_shape_and_type", classmethod(
        lambda cls, *a, memory_info=None, **k: no_api() if memory_info is not None else allocate(cls, *a, **k)
    ))  # fmt: skip
    fallback = BoundInstance(
        session, "cpu", 0, [2], kit.WINDOW, len(kit.LABELS), pinned_memory_info=pinned_marker
    )
    assert fallback._buckets[2].pinned is None
    np.testing.assert_allclose(fallback.run(_windows(2)), kit.reference_probs(_windows(2)), atol=1e-5)


def test_bound_io_reports_the_h2d_compute_d2h_split_and_lumen_bench_prints_it(
    tmp_path: Path,
    fake_cuda,
    capsys: pytest.CaptureFixture[str],  # noqa: ANN001
) -> None:
    import json

    from serving import bench

    path = kit.build_model(tmp_path / "tone.onnx")
    model = OnnxModel(path, device="cuda", max_batch_size=4)
    assert model.last_phases() is None
    model.run(_windows(3))
    assert set(model.last_phases()) == {"h2d", "compute", "d2h"} and min(model.last_phases().values()) >= 0
    assert OnnxModel(path).last_phases() is None  # CPU EP: nothing is copied separately

    report = tmp_path / "bench.json"
    argv = ["model", str(path), "--device", "cuda", "--batch-sizes", "1,3", "--iters", "2", "--warmup", "0"]
    assert bench.main([*argv, "--threads", "1", "--json", str(report)]) == 0
    assert "host->device" in capsys.readouterr().out
    document = json.loads(report.read_text())
    assert document["device"] == "cuda:0" and set(document["phases_ms"]) == {"1", "3"}
    assert set(document["phases_ms"]["3"]) == {"h2d", "compute", "d2h"}


def test_the_registry_exports_each_batchs_h2d_compute_d2h_split_as_metrics(
    tmp_path: Path,
    fake_cuda,  # noqa: ANN001
) -> None:
    from serving.bench_server import stage_totals
    from serving.metrics import ServerMetrics
    from serving.registry import PhaseObserver, _reporting_phases

    metrics = ServerMetrics()
    assert isinstance(metrics, PhaseObserver)
    path = kit.build_model(tmp_path / "tone.onnx")
    for device, batches in (("cuda", 2), ("cpu", 0)):
        model = OnnxModel(path, device=device, max_batch_size=4)
        run = _reporting_phases(model.runners[0], model, 0, device, metrics)
        for n in (3, 2):
            np.testing.assert_allclose(run(_windows(n)), kit.reference_probs(_windows(n)), atol=1e-5)
        totals = stage_totals(metrics.render().decode(), device)
        assert totals["h2d"][1] == totals["d2h"][1] == batches  # the CPU EP reports no copies
        assert totals["h2d"][0] >= 0 and totals["d2h"][0] >= 0


def test_the_registry_lists_an_fp16_sibling_under_its_fp32_model_only(tmp_path: Path) -> None:
    from serving.registry import _stamp, scan_model_dir

    path = kit.build_model(tmp_path / "tone.onnx")
    alone = kit.build_model(tmp_path / "sub" / "half.fp16.onnx")  # no fp32 beside it: a model of its own
    assert sorted(scan_model_dir(tmp_path)) == ["sub/half.fp16.onnx", "tone.onnx"]
    before = _stamp(path)
    sibling = _fp16_sibling(path)
    assert sorted(scan_model_dir(tmp_path)) == ["sub/half.fp16.onnx", "tone.onnx"]
    assert _stamp(path) != before  # a new or replaced fp16 sibling reloads tone.onnx's entry
    assert len(_stamp(path)) == 4 and len(_stamp(sibling)) == 2 and alone.exists()
