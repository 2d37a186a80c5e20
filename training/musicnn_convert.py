"""One-time converter: musicnn 0.1.0's TF1 ``MTT_musicnn`` checkpoint -> safetensors + a parity fixture.

Run it once, in a separate venv with TensorFlow (never in the project venv; torch is not needed)::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy safetensors
    pip download --no-deps musicnn==0.1.0 -d /tmp/mn && unzip -q /tmp/mn/musicnn-0.1.0-py3-none-any.whl -d /tmp/mn
    PYTHONPATH=. /tmp/tfvenv/bin/python -m training.musicnn_convert /tmp/mn/musicnn/MTT_musicnn \\
        --out models/pretrained/musicnn_mtt.safetensors --fixture tests/fixtures/musicnn_mtt_parity.npz

(``pip install -e '.[musicnn-convert]'`` names the same dependencies.) The checkpoint files in the
wheel are dot-prefixed (``.index``, ``.data-00000-of-00001``, ``.meta``: checkpoint prefix ``""``).

Weights: read with ``tf.compat.v1.train.NewCheckpointReader`` and renamed/transposed to the
``training.musicnn.MusicnnTagger`` state dict (TF NHWC conv kernels ``[kh, kw, in, out]`` -> torch
``[out, in, kh, kw]``; the mid-end's ``[7, width, 1, 64]`` kernels -> ``Conv1d`` ``[64, width, 7]``;
dense ``[in, out]`` -> ``[out, in]``; batch-norm gamma/beta/moving mean/variance). Optimiser slots are
left out.

Fixture: musicnn's own inference graph from the ``.meta`` (``_output_shapes`` attrs dropped, then
``extract_sub_graph`` down to ``model/Sigmoid``, imported and given the checkpoint's values) run on a
small deterministic log-mel batch; the ``.npz`` holds that input and the graph's logits and sigmoid
outputs, so a torch-only test checks the port against TensorFlow without TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

N_FRAMES = 187  # musicnn's 3 s input patch
N_MELS = 96
INPUT_NODE = "model/Placeholder:0"
TRAINING_NODE = "model/Placeholder_2:0"
SIGMOID_NODE = "model/Sigmoid"
LOGITS_NODE = "model/dense_1/BiasAdd:0"

# TF layer (creation order in musicnn.models.build_musicnn) -> torch module path in MusicnnTagger.
CONVS = {
    "conv2d": ("backbone.timbral.0.conv", "conv2d"),
    "conv2d_1": ("backbone.timbral.1.conv", "conv2d"),
    "conv2d_2": ("backbone.temporal.0.conv", "conv2d"),
    "conv2d_3": ("backbone.temporal.1.conv", "conv2d"),
    "conv2d_4": ("backbone.temporal.2.conv", "conv2d"),
    "conv2d_5": ("backbone.midend.0.conv", "conv1d"),
    "conv2d_6": ("backbone.midend.1.conv", "conv1d"),
    "conv2d_7": ("backbone.midend.2.conv", "conv1d"),
    "dense": ("backbone.dense", "dense"),
    "dense_1": ("tags", "dense"),
}
BATCH_NORMS = {
    "batch_normalization": "backbone.input_bn",
    "batch_normalization_1": "backbone.timbral.0.bn",
    "batch_normalization_2": "backbone.timbral.1.bn",
    "batch_normalization_3": "backbone.temporal.0.bn",
    "batch_normalization_4": "backbone.temporal.1.bn",
    "batch_normalization_5": "backbone.temporal.2.bn",
    "batch_normalization_6": "backbone.midend.0.bn",
    "batch_normalization_7": "backbone.midend.1.bn",
    "batch_normalization_8": "backbone.midend.2.bn",
    "batch_normalization_9": "backbone.pool_bn",
    "batch_normalization_10": "backbone.dense_bn",
}
BN_FIELDS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def convert_weights(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF variable name -> value, to the torch ``MusicnnTagger`` state dict (numpy, float32)."""
    state: dict[str, np.ndarray] = {}
    for tf_name, (torch_name, kind) in CONVS.items():
        kernel = variables[f"{tf_name}/kernel"]
        if kind == "conv2d":
            weight = kernel.transpose(3, 2, 0, 1)
        elif kind == "conv1d":
            weight = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:
            weight = kernel.T
        state[f"{torch_name}.weight"] = weight
        state[f"{torch_name}.bias"] = variables[f"{tf_name}/bias"]
    for tf_name, torch_name in BATCH_NORMS.items():
        for tf_field, torch_field in BN_FIELDS.items():
            state[f"{torch_name}.{torch_field}"] = variables[f"{tf_name}/{tf_field}"]
    # No num_batches_tracked: torch's batch-norm fills in a missing counter when loading.
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def fixture_input(n: int = 2, seed: int = 0) -> np.ndarray:
    """A deterministic ``[n, 187, 96]`` log-mel batch in musicnn's range (log10(10000 x + 1) of mel power).

    Harmonic partials with a decaying envelope over a noise floor: structured enough to drive every
    layer away from zero, small enough (~140 KB) to commit.
    """
    rng = np.random.default_rng(seed)
    frames, mels = np.arange(N_FRAMES)[:, None], np.arange(N_MELS)[None, :]
    batch = []
    for i in range(n):
        f0 = 6 + 5 * i
        partials = sum(np.exp(-0.5 * ((mels - f0 * (k + 1) ** 0.6) / 1.2) ** 2) / (k + 1) for k in range(8))
        envelope = np.exp(-frames / (40.0 + 60 * i)) * (1 + 0.3 * np.sin(frames / 5.0))
        power = 2.0 * partials * envelope + 1e-4 * rng.random((N_FRAMES, N_MELS))
        batch.append(np.log10(10_000.0 * power + 1.0))
    return np.stack(batch).astype(np.float32)


def read_checkpoint(ckpt_dir: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(str(ckpt_dir) + "/")
    return {
        name: reader.get_tensor(name)
        for name in sorted(reader.get_variable_to_shape_map())
        if "Adam" not in name and "beta1_power" not in name and "beta2_power" not in name
    }


def run_tf_graph(ckpt_dir: Path, variables: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """musicnn's inference graph from the ``.meta`` on ``x``; returns its logits and sigmoid outputs."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString((ckpt_dir / ".meta").read_bytes())
    graph_def = meta.graph_def
    for node in graph_def.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [SIGMOID_NODE])
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        names = {op.name for op in graph.get_operations()}
        with tf.compat.v1.Session(graph=graph) as session:
            # The inference sub-graph keeps the VariableV2 ops but not their initialisers: assign directly.
            assigns = [
                tf.raw_ops.Assign(ref=graph.get_tensor_by_name(name + ":0"), value=value)
                for name, value in variables.items()
                if name in names
            ]
            session.run(assigns)
            logits, probs = session.run(
                [LOGITS_NODE, SIGMOID_NODE + ":0"], {INPUT_NODE: x, TRAINING_NODE: False}
            )
    return {"logits": logits.astype(np.float32), "probs": probs.astype(np.float32)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint_dir", type=Path, help="musicnn/MTT_musicnn from the unzipped musicnn wheel"
    )
    parser.add_argument("--out", type=Path, default=Path("models/pretrained/musicnn_mtt.safetensors"))
    parser.add_argument("--fixture", type=Path, default=Path("tests/fixtures/musicnn_mtt_parity.npz"))
    args = parser.parse_args(argv)
    from safetensors.numpy import save_file

    if not (args.checkpoint_dir / ".index").is_file():
        parser.error(f"{args.checkpoint_dir}: no .index file; pass the wheel's musicnn/MTT_musicnn folder")
    variables = read_checkpoint(args.checkpoint_dir)
    state = convert_weights(variables)
    n_params = sum(v.size for k, v in state.items() if "running" not in k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"source": "musicnn 0.1.0 MTT_musicnn", "licence": "ISC"})
    x = fixture_input()
    outputs = run_tf_graph(args.checkpoint_dir, variables, x)
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.fixture, log_mel=x, **outputs)
    print(f"{args.out}: {len(state)} tensors, {n_params} trainable parameters; {args.fixture}: {x.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
