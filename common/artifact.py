"""The artifact contract between export and serving: the metadata an ONNX file carries.

Export writes :class:`ArtifactMetadata` into the ONNX ``metadata_props`` (string -> string) with
:meth:`ArtifactMetadata.to_props`; serving reads it back with :func:`metadata_from_props` and never
guesses anything from a file name. Every value is stored under a ``lumen.`` key; values that are not
plain strings are JSON, so any ONNX tool (``onnx.load(...).metadata_props``, Netron) can read them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec

from common.labels import LABELS

PROP_PREFIX = "lumen."
FORMAT_VERSION = 1
INPUT_NAME = "waveform"
OUTPUT_NAME = "probs"
LOGITS_NAME = "logits"

Aggregation = Literal["mean", "max"]


class ArtifactError(ValueError):
    """Artifact metadata that is missing or invalid; the message names the field and the fix."""


class ArtifactMetadata(msgspec.Struct, kw_only=True, frozen=True):
    labels: list[str]
    sample_rate: int
    window_samples: int
    hop_samples: int
    thresholds: list[float]
    aggregation: Aggregation = "mean"
    architecture: str
    training_config: dict[str, Any] = msgspec.field(default_factory=dict)
    source_checkpoint_sha256: str = ""
    lumen_version: str = ""
    export_time: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / self.sample_rate

    @property
    def normalize_audio(self) -> bool:
        """Whether files are peak-normalised before windowing, as the model was trained.

        The training config travels with the artifact (and the checkpoint); a model trained on
        normalised audio must be evaluated on normalised audio, or its scores drift with file loudness.
        """
        return bool(self.training_config.get("normalize_audio", False))

    def validate(self) -> ArtifactMetadata:
        """Raise :class:`ArtifactError` naming the first bad field; return self when valid."""
        if not self.labels:
            raise ArtifactError("metadata field 'labels' is empty; export must store the label list")
        if len(set(self.labels)) != len(self.labels):
            raise ArtifactError(f"metadata field 'labels' has duplicates: {self.labels}")
        unknown = [c for c in self.labels if c not in LABELS]
        if unknown:
            raise ArtifactError(
                f"metadata field 'labels' has unknown codes {unknown}; expected IRMAS codes {list(LABELS)}"
            )
        if not 1000 <= self.sample_rate <= 384_000:
            raise ArtifactError(f"metadata field 'sample_rate' = {self.sample_rate} is not a plausible rate")
        if self.window_samples <= 0:
            raise ArtifactError(f"metadata field 'window_samples' must be > 0, got {self.window_samples}")
        if not 0 < self.hop_samples <= self.window_samples:
            raise ArtifactError(
                f"metadata field 'hop_samples' must be in 1..window_samples ({self.window_samples}), "
                f"got {self.hop_samples}"
            )
        if len(self.thresholds) != len(self.labels):
            raise ArtifactError(
                f"metadata field 'thresholds' has {len(self.thresholds)} values for {len(self.labels)} labels"
            )
        bad = [t for t in self.thresholds if not 0.0 <= t <= 1.0]
        if bad:
            raise ArtifactError(f"metadata field 'thresholds' has values outside [0, 1]: {bad}")
        if self.aggregation not in ("mean", "max"):
            raise ArtifactError(
                f"metadata field 'aggregation' must be 'mean' or 'max', got {self.aggregation!r}"
            )
        if not self.architecture:
            raise ArtifactError("metadata field 'architecture' is empty")
        if self.format_version > FORMAT_VERSION:
            raise ArtifactError(
                f"metadata field 'format_version' = {self.format_version} is newer than this lumen-audio "
                f"understands ({FORMAT_VERSION}); upgrade lumen-audio"
            )
        return self

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props`` entries (all strings)."""
        out: dict[str, str] = {}
        for field in self.__struct_fields__:
            value = getattr(self, field)
            out[PROP_PREFIX + field] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return out


def metadata_from_props(props: dict[str, str], *, source: str = "artifact") -> ArtifactMetadata:
    """Parse and validate ``metadata_props``; errors name ``source`` and the field."""
    raw: dict[str, Any] = {}
    str_fields = {"aggregation", "architecture", "source_checkpoint_sha256", "lumen_version", "export_time"}
    for field in ArtifactMetadata.__struct_fields__:
        key = PROP_PREFIX + field
        if key not in props:
            continue
        value = props[key]
        if field in str_fields:
            raw[field] = value
        else:
            try:
                raw[field] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{source}: metadata field {field!r} is not valid JSON ({exc})") from None
    if not raw:
        raise ArtifactError(
            f"{source}: no lumen metadata found (no '{PROP_PREFIX}*' metadata_props); "
            "was it exported with lumen-export?"
        )
    try:
        meta = msgspec.convert(raw, ArtifactMetadata)
    except msgspec.ValidationError as exc:
        raise ArtifactError(f"{source}: invalid metadata: {exc}") from None
    try:
        return meta.validate()
    except ArtifactError as exc:
        raise ArtifactError(f"{source}: {exc}") from None
