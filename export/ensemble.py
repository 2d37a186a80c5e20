"""Several exported artifacts -> one ONNX file that averages their probabilities.

Models trained on different renders of the data make different mistakes; the mean of their
probabilities is a better-calibrated and usually more accurate answer than any one of them, and it
is still one artifact under the contract of ``DESIGN.md``: input ``waveform``, outputs ``probs`` and
``logits``, metadata in ``metadata_props``. The members' graphs are copied side by side (names
prefixed ``m0/``, ``m1/``, ...), all fed from the one ``waveform`` input, and joined by an ONNX
``Mean`` of their ``probs``; ``logits`` are the logit of that mean (probabilities clipped to
[1e-7, 1 - 1e-7] first, so they stay finite).

The members must agree on everything serving reads before a window reaches the model — labels,
sample rate, window, hop, aggregation and peak normalisation — otherwise averaging them would mix
answers to different questions. Thresholds are not averaged: the ensemble's probabilities are a new
model's, so its per-instrument thresholds are tuned again on labelled validation files
(:func:`tune_on`) exactly as ``lumen-train`` tunes a single model's (file level,
:func:`common.metrics.tune_thresholds`).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from common.artifact import (
    INPUT_NAME,
    LOGITS_NAME,
    OUTPUT_NAME,
    ArtifactError,
    ArtifactMetadata,
    metadata_from_props,
)
from common.audio import AudioError, aggregate, load_audio, split_windows
from common.datasets import scan_dataset
from common.labels import index_of
from common.metrics import compute_metrics, tune_thresholds
from common.version import __version__
from export.artifact import ExportError
from export.onnx import MAX_PROTO_BYTES, graph_problems
from training.checkpoint import sha256_of

LOGIT_EPS = 1e-7
_Named = TypeVar("_Named", onnx.TensorProto, onnx.ValueInfoProto)
MEMBER_PREFIX = "m{}/"
# Fields that decide what a window is and how window answers become a file's: members must agree.
SHARED_FIELDS = ("labels", "sample_rate", "window_samples", "hop_samples", "aggregation")


@dataclass(frozen=True)
class Member:
    path: Path
    model: onnx.ModelProto
    metadata: ArtifactMetadata
    sha256: str


def load_member(path: Path) -> Member:
    """One exported artifact, read and validated as serving reads it."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not ONNX at all
        raise ExportError(f"{path}: not an ONNX file ({type(exc).__name__})") from None
    try:  # parsed and validated exactly as serving parses it (export.onnx.read_onnx_metadata)
        metadata = metadata_from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
    except ArtifactError as exc:
        raise ExportError(f"{path}: not a lumen artifact ({exc})") from None
    outputs = [o.name for o in model.graph.output]
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise ExportError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, found inputs {inputs}, "
            f"outputs {outputs}"
        )
    return Member(path, model, metadata, sha256_of(path))


def _opset(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def check_compatible(members: Sequence[Member]) -> None:
    """Raise :class:`ExportError` naming the first field on which a member disagrees with the first."""
    if len(members) < 2:
        raise ExportError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for other in members[1:]:
        for field in SHARED_FIELDS:
            a, b = getattr(first.metadata, field), getattr(other.metadata, field)
            if a != b:
                raise ExportError(f"{other.path}: {field} {b} differs from {first.path}'s {a}")
        a_norm, b_norm = first.metadata.normalize_audio, other.metadata.normalize_audio
        if a_norm != b_norm:
            raise ExportError(
                f"{other.path}: normalize_audio {b_norm} differs from {first.path}'s {a_norm}; "
                "members must see the same input"
            )
        if _opset(other.model) != _opset(first.model):
            raise ExportError(
                f"{other.path}: ONNX opset {_opset(other.model)} differs from {first.path}'s "
                f"{_opset(first.model)}; re-export both with the same --opset"
            )


def _prefixed(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    """The member's graph with every name prefixed, its ``waveform`` input renamed back to the shared one."""
    graph = onnx.compose.add_prefix(copy.deepcopy(model), prefix).graph
    own_input = prefix + INPUT_NAME
    for node in graph.node:
        node.input[:] = [INPUT_NAME if name == own_input else name for name in node.input]
    return graph


def merge(members: Sequence[Member], *, expose_members: bool = False) -> onnx.ModelProto:
    """One graph: every member on the shared ``waveform``, ``probs`` = Mean, ``logits`` = logit(probs).

    ``expose_members`` adds each member's ``m<i>/probs`` as an output too (for measuring the members
    in the same pass as the ensemble; the artifact itself is written without them).
    """
    check_compatible(members)
    if any(m.model.functions for m in members):
        raise ExportError("members with ONNX local functions cannot be merged (re-export without them)")
    graphs = [_prefixed(m.model, MEMBER_PREFIX.format(i)) for i, m in enumerate(members)]
    n_labels = len(members[0].metadata.labels)
    batch = next(i for i in members[0].model.graph.input if i.name == INPUT_NAME)
    batch_dim = batch.type.tensor_type.shape.dim[0]
    batch_axis: str | int = batch_dim.dim_param or batch_dim.dim_value
    prefixes = [MEMBER_PREFIX.format(i) for i in range(len(members))]
    eps = helper.make_tensor("ensemble/eps", TensorProto.FLOAT, [], [LOGIT_EPS])
    top = helper.make_tensor("ensemble/one_minus_eps", TensorProto.FLOAT, [], [1.0 - LOGIT_EPS])
    one = helper.make_tensor("ensemble/one", TensorProto.FLOAT, [], [1.0])
    joins = [
        helper.make_node("Mean", [p + OUTPUT_NAME for p in prefixes], [OUTPUT_NAME], name="ensemble/mean"),
        helper.make_node(
            "Clip",
            [OUTPUT_NAME, "ensemble/eps", "ensemble/one_minus_eps"],
            ["ensemble/p"],
            name="ensemble/clip",
        ),
        helper.make_node("Sub", ["ensemble/one", "ensemble/p"], ["ensemble/q"], name="ensemble/q"),
        helper.make_node("Div", ["ensemble/p", "ensemble/q"], ["ensemble/odds"], name="ensemble/odds"),
        helper.make_node("Log", ["ensemble/odds"], [LOGITS_NAME], name="ensemble/logit"),
    ]
    graph = helper.make_graph(
        nodes=[node for g in graphs for node in g.node] + joins,
        name="lumen_ensemble",
        inputs=[copy.deepcopy(batch)],
        outputs=[
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch_axis, n_labels])
            for name in [OUTPUT_NAME, LOGITS_NAME]
            + ([p + OUTPUT_NAME for p in prefixes] if expose_members else [])
        ],
        initializer=[t for g in graphs for t in g.initializer] + [eps, top, one],
        value_info=[v for g in graphs for v in g.value_info],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _opset(members[0].model))],
        producer_name="lumen-ensemble",
    )
    model.ir_version = max(m.model.ir_version for m in members)
    problems = graph_problems(model)
    if problems:
        raise ExportError(
            f"the merged graph has {len(problems)} node(s) the CUDA EP cannot run: {problems[0]}"
        )
    size = model.ByteSize()
    if size > MAX_PROTO_BYTES:
        raise ExportError(
            f"the merged model is {size / 2**30:.1f} GB, over protobuf's 2 GB single-file limit"
        )
    onnx.checker.check_model(model)
    return model


def ensemble_metadata(members: Sequence[Member], thresholds: Sequence[float]) -> ArtifactMetadata:
    """The first member's contract with the ensemble's own thresholds and the members recorded."""
    first = members[0].metadata
    config = dict(first.training_config)
    config["ensemble_members"] = [
        {
            "file": m.path.name,
            "sha256": m.sha256,
            "architecture": m.metadata.architecture,
            "source_checkpoint_sha256": m.metadata.source_checkpoint_sha256,
            "thresholds": list(m.metadata.thresholds),
            "training_config": m.metadata.training_config,
        }
        for m in members
    ]
    return ArtifactMetadata(
        labels=list(first.labels),
        sample_rate=first.sample_rate,
        window_samples=first.window_samples,
        hop_samples=first.hop_samples,
        thresholds=[float(t) for t in thresholds],
        aggregation=first.aggregation,
        architecture="ENSEMBLE(" + "+".join(m.metadata.architecture for m in members) + ")",
        training_config=config,
        source_checkpoint_sha256="",
        lumen_version=__version__,
        export_time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    ).validate()


def with_metadata(model: onnx.ModelProto, meta: ArtifactMetadata) -> onnx.ModelProto:
    out = copy.copy(model)
    del out.metadata_props[:]
    for key, value in sorted(meta.to_props().items()):
        out.metadata_props.add(key=key, value=value)
    return out


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Tuning:
    """Tuned thresholds and file-level metrics of each output ``run`` gave, in its order."""

    thresholds: list[np.ndarray]
    metrics: list[dict[str, Any]]
    files: int
    skipped: dict[str, str]


def tune_on(
    run: Callable[[np.ndarray], Sequence[np.ndarray]],
    meta: ArtifactMetadata,
    specs: Sequence[str],
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Tuning:
    """Per-instrument thresholds of each output of ``run`` (windows -> [probs, ...]) on ``specs``' files.

    Files are cut and aggregated as serving does (same rate, normalisation, window, hop,
    aggregation); a file that cannot be decoded is skipped and reported, not fatal.
    """
    items = [item for spec in specs for item in scan_dataset(spec)[0]]
    if not items:
        raise ExportError(f"no labelled audio in {' '.join(specs)}")
    columns = np.array([index_of(code) for code in meta.labels])
    probs: list[list[np.ndarray]] = []  # per file, per output
    truth: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    unlabelled = [item.path for item in items if item.labels is None]
    if unlabelled:
        raise ExportError(f"{unlabelled[0]}: thresholds are tuned on labelled files; this one has no labels")
    for done, item in enumerate(items, 1):
        try:
            audio = load_audio(item.path, meta.sample_rate, normalize=meta.normalize_audio)
        except AudioError as exc:
            skipped[str(item.path)] = str(exc)
            continue
        windows = split_windows(audio, meta.window_samples, meta.hop_samples)
        batches = [run(windows.audio[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        per_output = [np.concatenate(outputs) for outputs in zip(*batches, strict=True)]
        probs.append([aggregate(w, meta.aggregation, valid=windows.valid) for w in per_output])
        truth.append(np.asarray(item.labels, dtype=bool)[columns])
        if progress is not None:
            progress(done, len(items))
    if not probs:
        raise ExportError(f"none of the {len(items)} files in {' '.join(specs)} could be read")
    y = np.stack(truth)
    if not y.any(axis=0).all():
        absent = [code for code, seen in zip(meta.labels, y.any(axis=0), strict=True) if not seen]
        raise ExportError(
            f"the validation files have no example of {', '.join(absent)}: its threshold cannot be tuned"
        )
    thresholds, metrics = [], []
    for k in range(len(probs[0])):
        p = np.stack([file_probs[k] for file_probs in probs])
        thresholds.append(tune_thresholds(y, p))
        metrics.append(compute_metrics(y, p, thresholds[-1], labels=meta.labels))
    return Tuning(thresholds, metrics, len(probs), skipped)


@dataclass(frozen=True)
class SplitMember:
    """One member recovered from an ensemble artifact: its graph, its own metadata, a file name.

    ``name`` is always ``m<index>.onnx``; ``recorded_file`` is the file name the ensemble recorded
    (metadata, so untrusted: shown, never used as a path).
    """

    index: int
    name: str
    recorded_file: str
    model: onnx.ModelProto
    metadata: ArtifactMetadata


def _unprefixed(name: str, prefix: str, where: str) -> str:
    if name in ("", INPUT_NAME):
        return name
    if not name.startswith(prefix):
        raise ExportError(f"{where}: {name!r} is not member {prefix!r}'s own; cannot split it out")
    return name[len(prefix) :]


def _own_renamed(items: Iterable[_Named], prefix: str, skip: tuple[str, ...] = ()) -> list[_Named]:
    """Copies of the protos (initializers, value infos) named ``prefix + name``, renamed ``name``;
    names in ``skip`` (the graph outputs, declared afresh) are left out."""
    out = []
    for item in items:
        if item.name.startswith(prefix) and item.name[len(prefix) :] not in skip:
            copied = copy.deepcopy(item)
            copied.name = item.name[len(prefix) :]
            out.append(copied)
    return out


def member_entries(meta: ArtifactMetadata) -> list[dict[str, Any]]:
    """The members an ensemble's metadata records (``training_config.ensemble_members``), checked."""
    entries = meta.training_config.get("ensemble_members")
    if not isinstance(entries, list) or not entries:
        raise ExportError("not an ensemble artifact: its metadata records no ensemble_members")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("thresholds"), list):
            raise ExportError(f"ensemble_members[{i}] has no thresholds; cannot rebuild its metadata")
        # Metadata is untrusted: bool is an int to Python, and float("0.5") or float(None) would either
        # accept a string or raise a TypeError traceback, so only real, finite numbers pass.
        bad = [
            t
            for t in entry["thresholds"]
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t)
        ]
        if bad:
            shown = ", ".join(repr(t)[:40] for t in bad[:3])
            raise ExportError(f"ensemble_members[{i}] has thresholds that are not finite numbers: {shown}")
        if not isinstance(entry.get("training_config"), dict):
            raise ExportError(f"ensemble_members[{i}] has no training_config; cannot rebuild its metadata")
    return entries


def split(model: onnx.ModelProto, meta: ArtifactMetadata) -> list[SplitMember]:
    """Every member of an ensemble built by :func:`merge`, as the artifact it was before merging.

    The inverse of :func:`merge` up to metadata: member ``i``'s nodes, initializers and value infos are
    the ones prefixed ``m<i>/``, with the prefix removed; its ``probs`` and ``logits`` are the graph's
    outputs again; its metadata is the ensemble's contract (labels, rate, window, hop, aggregation) with
    the member's own thresholds, architecture and training config as the ensemble recorded them. The
    bytes differ from the original member file (metadata order, export time), so the sha256 recorded in
    the ensemble is not expected to match; :func:`member_parity_runner` checks the outputs instead.
    """
    entries = member_entries(meta)
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        raise ExportError("the ensemble has control-flow subgraphs; splitting those is not supported")
    batch = next(i for i in graph.input if i.name == INPUT_NAME)
    batch_dim = batch.type.tensor_type.shape.dim[0]
    batch_axis: str | int = batch_dim.dim_param or batch_dim.dim_value
    claimed = 0
    out: list[SplitMember] = []
    for i, entry in enumerate(entries):
        prefix = MEMBER_PREFIX.format(i)
        nodes = [n for n in graph.node if n.output and all(o.startswith(prefix) for o in n.output)]
        produced = {o for n in nodes for o in n.output}
        for wanted in (OUTPUT_NAME, LOGITS_NAME):
            if prefix + wanted not in produced:
                raise ExportError(f"member {i}: no node produces {prefix + wanted!r}; not a lumen ensemble")
        where = f"member {i}"
        new_nodes = []
        for node in nodes:
            copied = copy.deepcopy(node)
            copied.name = _unprefixed(node.name, prefix, where) if node.name.startswith(prefix) else node.name
            copied.input[:] = [_unprefixed(x, prefix, where) for x in node.input]
            copied.output[:] = [_unprefixed(x, prefix, where) for x in node.output]
            new_nodes.append(copied)
        initializers = _own_renamed(graph.initializer, prefix)
        value_info = _own_renamed(graph.value_info, prefix, skip=(OUTPUT_NAME, LOGITS_NAME))
        claimed += len(nodes)
        n_labels = len(meta.labels)
        member_graph = helper.make_graph(
            nodes=new_nodes,
            name=f"lumen_member_{i}",
            inputs=[copy.deepcopy(batch)],
            outputs=[
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch_axis, n_labels])
                for name in (OUTPUT_NAME, LOGITS_NAME)
            ],
            initializer=initializers,
            value_info=value_info,
        )
        member_model = helper.make_model(
            member_graph, opset_imports=list(model.opset_import), producer_name="lumen-ensemble --split"
        )
        member_model.ir_version = model.ir_version
        try:
            onnx.checker.check_model(member_model)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"member {i} does not form a valid graph on its own: {exc}") from None
        member_meta = ArtifactMetadata(
            labels=list(meta.labels),
            sample_rate=meta.sample_rate,
            window_samples=meta.window_samples,
            hop_samples=meta.hop_samples,
            thresholds=[float(t) for t in entry["thresholds"]],
            aggregation=meta.aggregation,
            architecture=str(entry.get("architecture", "")),
            training_config=dict(entry["training_config"]),
            source_checkpoint_sha256=str(entry.get("source_checkpoint_sha256", "")),
            lumen_version=__version__,
            export_time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        try:
            member_meta.validate()
        except ArtifactError as exc:
            raise ExportError(f"member {i}'s recorded metadata is not a valid artifact's: {exc}") from None
        out.append(
            SplitMember(
                i,
                f"m{i}.onnx",
                str(entry.get("file", "")),
                with_metadata(member_model, member_meta),
                member_meta,
            )
        )
    joins = [n for n in graph.node if n.name.startswith("ensemble/")]
    if claimed + len(joins) != len(graph.node):
        raise ExportError(
            f"{len(graph.node) - claimed - len(joins)} node(s) belong to no member; not a lumen ensemble"
        )
    return out


def member_parity_runner(
    model: onnx.ModelProto, index: int
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A runner giving member ``index``'s probs and logits as computed inside the ensemble graph."""
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    prefix = MEMBER_PREFIX.format(index)
    names = [prefix + OUTPUT_NAME, prefix + LOGITS_NAME]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    probe_session = session(probe)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = probe_session.run(names, {INPUT_NAME: batch})
        return probs, logits

    return run
