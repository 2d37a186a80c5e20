"""ONNX: the production artifact, one self-contained file with the front-end inside the graph.

Exported with the dynamo-based ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` tracing +
onnxscript's torchlib), which is PyTorch's maintained exporter and matches eager PyTorch to ~1e-6 on
these models. The graph takes ``waveform`` float32 ``[batch, window_samples]`` with a dynamic batch
axis and returns ``probs`` and ``logits``. It must contain only standard-domain operators and no
``STFT``/``DFT``: ONNX Runtime's CUDA execution provider has no kernel for them and would silently run
that part of every batch on the CPU (:func:`graph_problems` enforces this at export time).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from common.artifact import INPUT_NAME, LOGITS_NAME, OUTPUT_NAME, ArtifactMetadata, metadata_from_props
from export.artifact import ExportError, ProbsAndLogits, first_line

# Opset 18 is the oldest the dynamo exporter's torchlib targets; 20 is what it emits by default
# and every ONNX Runtime >= 1.16 (CPU and CUDA) runs.
MIN_OPSET = 18
DEFAULT_OPSET = 20
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's hard limit for one serialized message
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
FORBIDDEN_OPS = frozenset({"STFT", "DFT", "MelWeightMatrix"})


def check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"--opset {opset} is not supported; use {MIN_OPSET}..{newest} (default {DEFAULT_OPSET})"
        )
    return opset


def _walk_nodes(graph: onnx.GraphProto, where: str) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node of ``graph`` and of the subgraphs in its attributes (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node, where
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _walk_nodes(sub, f"{where}/{node.name or node.op_type}.{attr.name}")


def graph_problems(model: onnx.ModelProto) -> list[str]:
    """Nodes that would keep the artifact off a GPU: STFT/DFT, or operators outside the standard domain.

    Calls to the model's own local functions are allowed and their bodies are checked too, so a
    forbidden node cannot hide inside a function or an If/Loop/Scan subgraph.
    """
    functions = {(f.domain, f.name): f for f in model.functions}
    problems: list[str] = []
    checked: set[tuple[str, str]] = set()
    pending: list[tuple[onnx.GraphProto | onnx.FunctionProto, str]] = [(model.graph, "graph")]
    while pending:
        container, where = pending.pop()
        nodes = (
            _walk_nodes(container, where)
            if isinstance(container, onnx.GraphProto)
            else ((node, where) for node in container.node)
        )
        for node, place in nodes:
            key = (node.domain, node.op_type)
            label = f"{node.domain + ':' if node.domain else ''}{node.op_type} node {node.name!r} in {place}"
            if key in functions:
                if key not in checked:
                    checked.add(key)
                    pending.append((functions[key], f"function {node.domain}:{node.op_type}"))
            elif node.domain not in STANDARD_DOMAINS:
                problems.append(f"custom-domain {label}")
            elif node.op_type in FORBIDDEN_OPS:
                problems.append(label)
    return sorted(problems)


def to_onnx(module: ProbsAndLogits, window_samples: int, *, opset: int, batch_hint: int) -> onnx.ModelProto:
    """The traced graph as an in-memory proto (weights inside; nothing is written to disk here)."""
    example = torch.zeros(batch_hint, window_samples)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # The exporter warns about its own internals (e.g. deprecated torch.export options); parity
        # checks, not warnings, decide whether the graph is right.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, LOGITS_NAME],
            dynamic_shapes={"waveform": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return program.model_proto


def write_onnx(
    module: ProbsAndLogits,
    meta: ArtifactMetadata,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    batch_hint: int = 2,
) -> None:
    """Export ``module`` to ``path`` as one self-contained ONNX file carrying ``meta``.

    The proto is written with every initializer inline (no ``.onnx.data`` side file), so the file
    is the whole artifact; models too big for that (> 2 GB) are refused with a clear message.
    """
    check_opset(opset)
    try:
        model = to_onnx(module, meta.window_samples, opset=opset, batch_hint=batch_hint)
    except Exception as exc:  # the exporter raises many types; the user needs model + first line
        raise ExportError(
            f"{meta.architecture} cannot be exported to ONNX (torch.onnx dynamo exporter): {first_line(exc)}"
        ) from exc
    problems = graph_problems(model)
    if problems:
        raise ExportError(
            f"{meta.architecture}: the ONNX graph has {len(problems)} node(s) ONNX Runtime's CUDA EP cannot run "
            f"(first: {problems[0]}); the front-end must be plain Conv/MatMul/Log ops"
        )
    for key, value in sorted(meta.to_props().items()):
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "lumen-export"
    size = model.ByteSize()
    if size > MAX_PROTO_BYTES:
        raise ExportError(
            f"{meta.architecture}: the ONNX model is {size / 2**30:.1f} GB, over protobuf's 2 GB single-file limit"
        )
    onnx.checker.check_model(model)
    onnx.save_model(model, path, save_as_external_data=False)


def read_onnx_metadata(path: Path) -> ArtifactMetadata:
    """The artifact's metadata, parsed and validated exactly as serving parses it."""
    model = onnx.load(str(path), load_external_data=False)
    return metadata_from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
