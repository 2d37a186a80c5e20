"""Artifact metadata: the round trip through ONNX metadata_props and one error per invalid field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.artifact import (
    FORMAT_VERSION,
    PROP_PREFIX,
    ArtifactError,
    ArtifactMetadata,
    metadata_from_props,
)
from common.labels import LABELS


def make_metadata(**overrides: Any) -> ArtifactMetadata:
    fields: dict[str, Any] = {
        "labels": list(LABELS),
        "sample_rate": 16000,
        "window_samples": 48000,
        "hop_samples": 24000,
        "thresholds": [0.5] * 10 + [0.35],
        "aggregation": "max",
        "architecture": "cnn14",
        "training_config": {
            "model": {"name": "cnn14", "dropout": 0.2},
            "seed": 7,
            "augmentations": ["mixup"],
        },
        "source_checkpoint_sha256": "ab" * 32,
        "lumen_version": "0.1.0",
        "export_time": "2026-11-24T12:00:00Z",
    }
    fields.update(overrides)
    return ArtifactMetadata(**fields)


def test_round_trip_through_props() -> None:
    meta = make_metadata()
    props = meta.to_props()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    assert all(k.startswith(PROP_PREFIX) for k in props)
    assert props["lumen.architecture"] == "cnn14"  # plain strings stay readable in Netron
    assert json.loads(props["lumen.labels"]) == list(LABELS)
    back = metadata_from_props(props)
    assert back == meta
    assert back.format_version == FORMAT_VERSION
    assert back.window_seconds == 3.0 and back.hop_seconds == 1.5


def test_optional_fields_take_defaults_and_foreign_props_are_ignored() -> None:
    required = ("labels", "sample_rate", "window_samples", "hop_samples", "thresholds", "architecture")
    props = {k: v for k, v in make_metadata().to_props().items() if k.removeprefix(PROP_PREFIX) in required}
    props["producer"] = "someone else"
    meta = metadata_from_props(props)
    assert meta.aggregation == "mean" and meta.training_config == {} and meta.lumen_version == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("labels", [], "'labels' is empty"),
        ("labels", ["cel", "cel"], "'labels' has duplicates"),
        ("labels", ["cel", "banjo"], "'labels' has unknown codes \\['banjo'\\]"),
        ("sample_rate", 10, "'sample_rate' = 10"),
        ("window_samples", 0, "'window_samples' must be > 0"),
        ("hop_samples", 0, "'hop_samples' must be in 1..window_samples"),
        ("hop_samples", 48001, "'hop_samples' must be in 1..window_samples"),
        ("thresholds", [0.5] * 3, "'thresholds' has 3 values for 11 labels"),
        ("thresholds", [0.5] * 10 + [1.5], "'thresholds' has values outside \\[0, 1\\]"),
        ("architecture", "", "'architecture' is empty"),
        ("format_version", FORMAT_VERSION + 1, "'format_version' .* upgrade lumen-audio"),
    ],
)
def test_each_invalid_field_is_named(field: str, value: Any, message: str) -> None:
    props = make_metadata(**{field: value}).to_props()
    with pytest.raises(ArtifactError, match=f"^model.onnx: metadata field {message}"):
        metadata_from_props(props, source="model.onnx")


def test_invalid_aggregation_is_named() -> None:
    props = make_metadata().to_props()
    props["lumen.aggregation"] = "median"
    with pytest.raises(ArtifactError, match="model.onnx: invalid metadata: .*aggregation"):
        metadata_from_props(props, source="model.onnx")
    with pytest.raises(ArtifactError, match="'aggregation' must be 'mean' or 'max'"):
        make_metadata(aggregation="median").validate()


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("sample_rate", "sixteen", "metadata field 'sample_rate' is not valid JSON"),
        ("sample_rate", '"16000"', "invalid metadata: .*sample_rate"),
        ("labels", '{"cel": 1}', "invalid metadata: .*labels"),
    ],
)
def test_malformed_values_are_named(key: str, raw: str, message: str) -> None:
    props = make_metadata().to_props()
    props[PROP_PREFIX + key] = raw
    with pytest.raises(ArtifactError, match=f"x.onnx: {message}"):
        metadata_from_props(props, source="x.onnx")


def test_missing_required_field_and_missing_metadata() -> None:
    props = make_metadata().to_props()
    del props["lumen.window_samples"]
    with pytest.raises(ArtifactError, match="x.onnx: invalid metadata: .*window_samples"):
        metadata_from_props(props, source="x.onnx")
    with pytest.raises(ArtifactError, match="x.onnx: no lumen metadata found .*lumen-export"):
        metadata_from_props({"producer": "pytorch"}, source="x.onnx")
