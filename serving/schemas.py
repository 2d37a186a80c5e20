"""Request and response bodies as msgspec Structs: the OpenAPI document is generated from these.

Probabilities and predictions are keyed by file name (uploads) or by path relative to the data root
(directory endpoints), then by instrument code in the artifact's label order.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    path: str
    loaded: bool
    architecture: str | None = None
    labels: list[str] = msgspec.field(default_factory=list)
    sample_rate: int | None = None
    window_seconds: float | None = None
    hop_seconds: float | None = None
    thresholds: list[float] = msgspec.field(default_factory=list)
    aggregation: str | None = None
    active_providers: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class TimelineWindow(msgspec.Struct, kw_only=True):
    start: float
    end: float
    probabilities: dict[str, float]


class PredictResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    predictions: dict[str, dict[str, int]]
    probabilities: dict[str, dict[str, float]]
    errors: dict[str, str]
    timeline: dict[str, list[TimelineWindow]] | None = None


class PredictDirectoryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: NonEmptyText
    paths: Annotated[list[NonEmptyText], msgspec.Meta(min_length=1)]
    threshold: Probability | None = None
    timeline: bool = False


DatasetType = Literal["irmastrain", "irmastest", "csv"]


class DatasetRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    dataset_type: DatasetType
    dataset_path: NonEmptyText


class TestDirectoryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: NonEmptyText
    datasets: Annotated[list[DatasetRef], msgspec.Meta(min_length=1)]
    add_instrument_metrics: bool = False
    threshold: Probability | None = None


class FileMetrics(msgspec.Struct, kw_only=True):
    """File-level multi-label metrics (``None`` where undefined, e.g. a label never present)."""

    n_files: int
    accuracy: float | None
    exact_match: float | None
    hamming_distance: float | None
    f1_micro: float | None
    f1_macro: float | None
    precision_micro: float | None
    precision_macro: float | None
    recall_micro: float | None
    recall_macro: float | None
    lrap: float | None
    top1: float | None
    map: float | None
    roc_auc_macro: float | None


class InstrumentMetrics(msgspec.Struct, kw_only=True):
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float | None
    roc_auc: float | None
    average_precision: float | None
    support: int


class TestDirectoryResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    predictions: dict[str, dict[str, int]]
    probabilities: dict[str, dict[str, float]]
    errors: dict[str, str]
    metrics: FileMetrics | None
    instrument_metrics: dict[str, InstrumentMetrics] | None = None


class StreamChunk(msgspec.Struct, kw_only=True, omit_defaults=True, tag="chunk", tag_field="type"):
    """One NDJSON line per finished chunk of files; ``done`` counts files finished so far."""

    done: int
    predictions: dict[str, dict[str, int]]
    probabilities: dict[str, dict[str, float]]
    errors: dict[str, str]
    timeline: dict[str, list[TimelineWindow]] | None = None


class StreamSummary(msgspec.Struct, kw_only=True, omit_defaults=True, tag="summary", tag_field="type"):
    """The last NDJSON line of a stream, also when the stream stopped early (then ``error`` says why
    and ``status`` is the HTTP status the same failure would have had before the stream began)."""

    model: str
    n_files: int
    n_errors: int
    metrics: FileMetrics | None = None
    instrument_metrics: dict[str, InstrumentMetrics] | None = None
    error: str | None = None
    status: int | None = None


class HealthResponse(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"


class ReadyResponse(msgspec.Struct, kw_only=True):
    ready: bool
    models: dict[str, str]
    """Per model requested at start: ``"ready"``, ``"loading"`` or the load error."""
