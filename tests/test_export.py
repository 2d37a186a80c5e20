"""lumen-export: ONNX/TorchScript/pt2 artifacts that keep the contract, match PyTorch, and fail cleanly."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper

import export.cli
from common.artifact import INPUT_NAME, LOGITS_NAME, OUTPUT_NAME, metadata_from_props
from common.audio import split_windows
from common.labels import LABELS
from common.version import __version__
from export.cli import main
from export.onnx import graph_problems
from export.torchscript import load_pt2, load_torchscript
from serving.runtime import OnnxModel
from training.checkpoint import MODEL_PREFIX, build_hparams, sha256_of
from training.config import FrontendConfig, ModelConfig, TrainConfig
from training.models import build_model

SR = 8000
WINDOW = 4000  # 0.5 s at SR
THRESHOLDS = [round(0.3 + 0.03 * i, 2) for i in range(len(LABELS))]


def tiny_config(
    model: str = "SMALL_CNN", audio_transform: str = "MEL_SPECTROGRAM", **model_kwargs: object
) -> TrainConfig:
    return TrainConfig(
        frontend=FrontendConfig(
            audio_transform=audio_transform, sample_rate=SR, n_fft=256, hop_length=128, n_mels=32
        ),
        model=ModelConfig(model=model, **model_kwargs),  # type: ignore[arg-type]
        window_seconds=WINDOW / SR,
        hop_seconds=WINDOW / SR / 2,
    ).validate()


def write_checkpoint(path: Path, config: TrainConfig, *, seed: int = 0) -> torch.nn.Module:
    """A checkpoint in lumen-train's layout (Lightning ``state_dict`` under ``model.``, plain hparams).

    Random weights are enough: parity is about the artifact reproducing *this* model.
    """
    torch.manual_seed(seed)
    model = build_model(config).eval()
    state = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": build_hparams(config, THRESHOLDS)}, path)
    return model


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


def torch_probs(model: torch.nn.Module, windows: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(windows))).numpy()


def chord(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    signal = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((220.0, 330.0, 440.0)))
    return (0.9 * signal / np.max(np.abs(signal))).astype(np.float32)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor in the graph (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> tuple[Path, torch.nn.Module, TrainConfig]:
    ckpt = tmp_path_factory.mktemp("small_cnn") / "best.ckpt"
    config = tiny_config("SMALL_CNN", width=0.25)
    return ckpt, write_checkpoint(ckpt, config), config


@pytest.fixture(scope="module")
def small_cnn_onnx(small_cnn) -> tuple[Path, str]:
    """The default export: ONNX next to the checkpoint, verified."""
    ckpt, _, _ = small_cnn
    status, stdout = run_cli([str(ckpt)])
    assert status == 0, stdout
    return ckpt.with_suffix(".onnx"), stdout


def test_onnx_lands_next_to_the_checkpoint_as_one_self_contained_file(small_cnn, small_cnn_onnx) -> None:
    ckpt, _, _ = small_cnn
    path, _ = small_cnn_onnx
    assert path == ckpt.parent / "best.onnx"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.ckpt", "best.onnx"]  # no .data, no temp
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not any(t.external_data for t in model.graph.initializer)


def test_onnx_signature_is_the_serving_contract(small_cnn_onnx) -> None:
    model = onnx.load(str(small_cnn_onnx[0]))
    (waveform,) = model.graph.input
    assert waveform.name == INPUT_NAME
    assert waveform.type.tensor_type.elem_type == TensorProto.FLOAT
    batch, window = waveform.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.dim_value  # dynamic batch axis
    assert window.dim_value == WINDOW
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(outputs) == [OUTPUT_NAME, LOGITS_NAME]
    for tensor in outputs.values():
        assert tensor.elem_type == TensorProto.FLOAT
        assert tensor.shape.dim[1].dim_value == len(LABELS)


def test_onnx_graph_has_no_stft_dft_or_custom_domain_node(small_cnn_onnx) -> None:
    model = onnx.load(str(small_cnn_onnx[0]))
    assert graph_problems(model) == []
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert {op for _, op in ops} & {"STFT", "DFT"} == set()
    assert {domain for domain, _ in ops} <= {"", "ai.onnx"}
    assert "Conv" in {op for _, op in ops} and "Log" in {op for _, op in ops}  # the DFT front-end is inside


def test_graph_problems_finds_forbidden_nodes_in_subgraphs_and_functions() -> None:
    """The walker must see through If branches and local functions, or a hidden STFT slips past it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    branch = helper.make_graph(
        [helper.make_node("STFT", ["x"], ["y"], name="hidden_stft")], "branch", [], [y]
    )
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain", [], [y])
    function = helper.make_function(
        "local",
        "frontend",
        ["a"],
        ["b"],
        [helper.make_node("DFT", ["a"], ["b"], name="fn_dft")],
        [helper.make_opsetid("", 20)],
    )
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["c"], ["i"], then_branch=branch, else_branch=plain, name="cond"),
        helper.make_node("frontend", ["i"], ["f"], domain="local"),
        helper.make_node("FusedConv", ["f"], ["y"], domain="com.microsoft", name="fused"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]),
        functions=[function],
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("local", 1)],
    )
    problems = graph_problems(model)
    assert len(problems) == 3
    assert any("STFT node 'hidden_stft'" in p and "cond.then_branch" in p for p in problems)
    assert any("DFT node 'fn_dft'" in p and "function local:frontend" in p for p in problems)
    assert any(p.startswith("custom-domain com.microsoft:FusedConv") for p in problems)


def test_onnx_metadata_round_trips_through_common_schema(small_cnn, small_cnn_onnx) -> None:
    ckpt, _, config = small_cnn
    model = onnx.load(str(small_cnn_onnx[0]))
    meta = metadata_from_props({p.key: p.value for p in model.metadata_props}, source="test")
    assert meta.labels == list(LABELS)
    assert (meta.sample_rate, meta.window_samples, meta.hop_samples) == (SR, WINDOW, WINDOW // 2)
    assert meta.thresholds == THRESHOLDS
    assert meta.aggregation == config.aggregation
    assert meta.architecture == "SMALL_CNN"
    assert TrainConfig.from_dict(meta.training_config) == config
    assert meta.source_checkpoint_sha256 == sha256_of(ckpt)
    assert meta.lumen_version == __version__
    exported = dt.datetime.fromisoformat(meta.export_time)
    assert abs(dt.datetime.now(dt.UTC) - exported) < dt.timedelta(hours=1)


def test_serving_runtime_reproduces_the_torch_model_on_real_windows(small_cnn, small_cnn_onnx) -> None:
    """The cross-package contract: serving's OnnxModel on windows cut by common.audio == eager torch."""
    _, model, config = small_cnn
    windows = split_windows(chord(1.3), config.window_samples, config.hop_samples).audio
    served = OnnxModel(small_cnn_onnx[0])
    np.testing.assert_allclose(served.run(windows), torch_probs(model, windows), atol=1e-4, rtol=0)


def test_verification_prints_every_case_at_both_ort_optimisation_levels(small_cnn_onnx) -> None:
    stdout = small_cnn_onnx[1]
    for runtime in ("no graph opt", "ORT_ENABLE_ALL"):
        for inputs in ("audio", "random"):
            for batch in (1, 5):
                assert any(
                    runtime in line and f"{inputs} " in line and f"batch {batch}:" in line
                    for line in stdout.splitlines()
                ), (runtime, inputs, batch, stdout)
    assert "parity ok" in stdout


def test_fp16_keeps_float32_io_log_and_sigmoid(small_cnn, tmp_path) -> None:
    ckpt, model, config = small_cnn
    copy = tmp_path / "half.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    status, stdout = run_cli([str(copy), "--fp16"])
    assert status == 0, stdout
    out = tmp_path / "half.fp16.onnx"  # beside the fp32 name, where lumen-serve --device cuda looks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.ckpt", "half.fp16.onnx"]
    assert "tolerance 0.01" in stdout
    graph = onnx.load(str(out))
    types = elem_types(graph)
    assert TensorProto.FLOAT16 in {t.data_type for t in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type in ("Log", "Sigmoid"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.op_type
    windows = split_windows(chord(1.0), config.window_samples, config.hop_samples).audio
    np.testing.assert_allclose(OnnxModel(out).run(windows), torch_probs(model, windows), atol=1e-2, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_formats_carry_metadata_and_match_eager(small_cnn, tmp_path, fmt) -> None:
    ckpt, model, _ = small_cnn
    out = tmp_path / f"model.{fmt}"
    status, stdout = run_cli([str(ckpt), "--format", fmt, "--out", str(out)])
    assert status == 0, stdout
    loaded, meta = (load_torchscript if fmt == "torchscript" else load_pt2)(out)
    assert meta.source_checkpoint_sha256 == sha256_of(ckpt) and meta.thresholds == THRESHOLDS
    windows = np.random.default_rng(3).uniform(-1, 1, (3, WINDOW)).astype(np.float32)
    with torch.inference_mode():
        probs, logits = loaded(torch.from_numpy(windows))
    np.testing.assert_allclose(probs.numpy(), torch_probs(model, windows), atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), probs.numpy(), atol=1e-6, rtol=0)


def test_verify_audio_uses_the_given_file(small_cnn, tmp_path) -> None:
    ckpt, _, _ = small_cnn
    wav = tmp_path / "take.wav"
    sf.write(wav, chord(1.2), SR)
    status, stdout = run_cli([str(ckpt), "--out", str(tmp_path / "a.onnx"), "--verify-audio", str(wav)])
    assert status == 0, stdout
    assert f"audio windows: {wav}" in stdout


def test_failed_parity_writes_nothing_and_keeps_the_old_artifact(
    small_cnn, tmp_path, monkeypatch, capsys
) -> None:
    ckpt, _, _ = small_cnn
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous artifact")
    monkeypatch.setattr(export.cli, "FP32_TOLERANCE", -1.0)  # no difference can pass
    status = main([str(ckpt), "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    assert "parity check failed" in captured.err and str(out) in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "FAILED" in captured.out
    assert out.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def _error(argv: list[str], capsys) -> str:
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status != 0
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys) -> None:
    err = _error([str(tmp_path / "nope.ckpt")], capsys)
    assert "nope.ckpt" in err and "not found" in err
    assert list(tmp_path.iterdir()) == []


def test_unreadable_and_foreign_checkpoints_are_refused(small_cnn, tmp_path, capsys) -> None:
    truncated = tmp_path / "truncated.ckpt"  # an interrupted copy
    truncated.write_bytes(small_cnn[0].read_bytes()[:1000])
    assert "truncated.ckpt: not a readable torch checkpoint" in _error([str(truncated)], capsys)
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}, foreign)
    assert "not a lumen-audio checkpoint" in _error([str(foreign)], capsys)
    artifact = tmp_path / "model.onnx"  # a common mix-up: the export instead of the checkpoint
    artifact.write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(100))
    assert "model.onnx: not a PyTorch checkpoint (an exported artifact" in _error([str(artifact)], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "other.ckpt", "truncated.ckpt"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "pt2", "--fp16"], "--fp16 is only supported with --format onnx"),
        (["--opset", "9"], "--opset 9 is not supported"),
        (["--batch-hint", "1"], "--batch-hint must be >= 2"),
    ],
)
def test_unsupported_options_are_refused_before_writing(small_cnn, tmp_path, capsys, flags, message) -> None:
    ckpt, _, _ = small_cnn
    err = _error([str(ckpt), "--out", str(tmp_path / "x.out"), *flags], capsys)
    assert message in err
    assert list(tmp_path.iterdir()) == []


# Tiny random configs: the same code paths as the real architectures at a fraction of the cost.
AST_TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_length": 48,
    "num_mel_bins": 32,
    "patch_size": 16,
    "frequency_stride": 8,
    "time_stride": 8,
}
WAV2VEC_TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32],
    "conv_stride": [5, 4],
    "conv_kernel": [10, 8],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
MODEL_FAMILIES = [
    pytest.param("MOBILENET_V3_SMALL", "MEL_SPECTROGRAM", {}, id="timm-mobilenetv3"),
    pytest.param("AST", "AST", {"backbone_kwargs": AST_TINY}, id="ast"),
    pytest.param("WAV2VEC", "WAV2VEC", {"backbone_kwargs": WAV2VEC_TINY}, id="wav2vec2"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "transform", "kwargs"), MODEL_FAMILIES)
def test_every_model_family_exports_with_parity(tmp_path, model, transform, kwargs) -> None:
    ckpt = tmp_path / "m.ckpt"
    write_checkpoint(ckpt, tiny_config(model, transform, **kwargs))
    for fmt in ("onnx", "pt2"):
        status, stdout = run_cli([str(ckpt), "--format", fmt])
        assert status == 0, stdout
        assert "parity ok" in stdout
    assert graph_problems(onnx.load(str(tmp_path / "m.onnx"))) == []
