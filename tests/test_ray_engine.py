"""``lumen-test --engine ray`` against the local engine, an actor killed mid-run, and ``--resume``.

One local Ray (``ray.init(num_cpus=2)``) serves the whole module; the files are the tone-detector
artifact and tone files of ``serving_testkit``, half at another sample rate, plus one broken file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from serving_testkit import SAMPLE_RATE, build_model, label_set, write_tones

from common.datasets import Item
from common.labels import LABELS
from serving.evaluate_cli import main
from serving.evaluation import EvaluationError, load_predictor

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
ray_engine = pytest.importorskip("serving.ray_engine")

pytestmark = pytest.mark.xdist_group("ray")  # one Ray per test module, never one per xdist worker

N_FILES = 14


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    # Test-only actor classes below must travel by value: Ray's workers cannot import this module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray_engine")
    model = build_model(root / "tones.onnx")
    data = root / "irmas_test"
    for n in range(N_FILES):
        rate = SAMPLE_RATE if n % 2 else 2 * SAMPLE_RATE  # the decode tasks must resample
        write_tones(data / f"clip-{n:02d}.wav", label_set(n), seconds=0.5 + 0.1 * (n % 4), sample_rate=rate)
        (data / f"clip-{n:02d}.txt").write_text("".join(f"{LABELS[k]}\t\n" for k in label_set(n)[:2]))
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (data / "broken.txt").write_text("pia\t\n")
    return {"root": root, "model": model, "data": data}


def lumen_test(workspace: dict[str, Path], out: Path, *flags: str) -> int:
    return main(
        ["--model", str(workspace["model"]), "--dataset-paths", f"irmastest:{workspace['data']}"]
        + ["--out-dir", str(out), *flags]
    )


@pytest.fixture(scope="module")
def local_run(workspace: dict[str, Path]) -> Path:
    out = workspace["root"] / "local"
    assert lumen_test(workspace, out, "--batch-size", "7") == 0
    return out


def _probabilities(predictions: dict) -> dict[str, np.ndarray]:
    return {path: np.array([p["probabilities"][c] for c in LABELS]) for path, p in predictions.items()}


def _assert_same_predictions(got: dict, want: dict) -> None:
    assert list(got) == list(want)  # same files, same (input) order
    got_p, want_p = _probabilities(got), _probabilities(want)
    for path in want:
        np.testing.assert_allclose(got_p[path], want_p[path], rtol=0, atol=1e-5, err_msg=path)
        assert got[path]["labels"] == want[path]["labels"], path


def _journal(out: Path, name: str = "results") -> tuple[dict, list[dict]]:
    header, *rows = (json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines())
    return header, rows


def test_ray_engine_gives_the_local_engines_outputs(workspace: dict[str, Path], local_run: Path) -> None:
    out = workspace["root"] / "ray"
    assert lumen_test(workspace, out, "--engine", "ray", "--batch-size", "5") == 0

    want = json.loads((local_run / "predictions.json").read_text())
    got = json.loads((out / "predictions.json").read_text())
    assert len(want) == N_FILES
    _assert_same_predictions(got, want)
    assert json.loads((out / "errors.json").read_text()) == json.loads(
        (local_run / "errors.json").read_text()
    )
    want_metrics = yaml.safe_load((local_run / "metrics.yaml").read_text())
    got_metrics = yaml.safe_load((out / "metrics.yaml").read_text())
    for key in ("f1_micro", "f1_macro", "map", "lrap", "roc_auc_macro", "hamming_distance"):
        assert got_metrics[key] == pytest.approx(want_metrics[key], abs=1e-6), key

    import pyarrow.parquet as pq

    table = pq.read_table(out / ray_engine.TABLE_FILE).to_pylist()
    assert len(table) == N_FILES + 1  # one row per file, the broken one included
    by_path = {row["path"]: row for row in table}
    broken = by_path[str(workspace["data"] / "broken.wav")]
    assert broken["probabilities"] is None and broken["error"]
    for path, row in want.items():
        assert by_path[path]["error"] is None
        np.testing.assert_allclose(by_path[path]["probabilities"], _probabilities(want)[path], atol=1e-5)
        assert by_path[path]["labels"] == [row["labels"][c] for c in LABELS]
        assert sum(by_path[path]["targets"]) >= 1

    header, rows = _journal(out)
    assert header["labels"] == list(LABELS)
    assert sorted(row["path"] for row in rows) == sorted(by_path)


class DyingScorer(ray_engine.Scorer):
    """Kills its own actor process on its second call, once per run (the marker file says it did)."""

    marker = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        self.calls += 1
        if self.calls == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().__call__(batch)


def _items(workspace: dict[str, Path]) -> list[Item]:
    return [Item(path) for path in sorted(workspace["data"].glob("clip-*.wav"))]


def _predict(workspace: dict[str, Path], journal: Path, **kwargs: object):
    predictor = load_predictor(workspace["model"])
    options = {"resume": False, "device": "cpu", "batch_size": 4, "num_workers": 1, "files_per_block": 4}
    return ray_engine.predict_items(
        predictor.source, predictor.metadata, _items(workspace), journal, **{**options, **kwargs}
    )


def test_a_killed_actor_is_restarted_and_every_file_comes_back_once(
    workspace: dict[str, Path], local_run: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "actor-died"
    DyingScorer.marker = str(marker)
    run = _predict(workspace, tmp_path / "results.jsonl", scorer=DyingScorer)

    assert marker.exists()  # the actor really died, after it had scored a first call
    want = json.loads((local_run / "predictions.json").read_text())
    assert run.paths == list(want)
    np.testing.assert_allclose(run.probs, np.stack(list(_probabilities(want).values())), atol=1e-5)
    _, rows = _journal(tmp_path)
    paths = [row["path"] for row in rows]
    assert sorted(paths) == sorted(want) and len(set(paths)) == len(paths)


class Interrupted(Exception):
    pass


def test_resume_after_an_interrupted_run_writes_no_duplicates(
    workspace: dict[str, Path], local_run: Path, tmp_path: Path
) -> None:
    seen: list[int] = []

    def interrupt_after_first_block(n: int) -> None:
        seen.append(n)
        raise Interrupted

    with pytest.raises(Interrupted):
        _predict(workspace, tmp_path / "results.jsonl", on_rows=interrupt_after_first_block)
    _, first = _journal(tmp_path)
    assert 0 < len(first) == seen[0] < N_FILES
    with (tmp_path / "results.jsonl").open("a") as handle:
        handle.write('{"path": "torn by the crash", "probab')  # the line a crash cut short

    assert lumen_test(workspace, tmp_path, "--engine", "ray", "--resume") == 0
    _, rows = _journal(tmp_path)
    paths = [row["path"] for row in rows]
    assert rows[: len(first)] == first  # kept, not scored again
    assert len(paths) == len(set(paths)) == N_FILES + 1  # every file once, the broken one included
    got = json.loads((tmp_path / "predictions.json").read_text())
    _assert_same_predictions(got, json.loads((local_run / "predictions.json").read_text()))

    # A finished run resumed again scores nothing and changes nothing.
    assert lumen_test(workspace, tmp_path, "--engine", "ray", "--resume") == 0
    assert _journal(tmp_path)[1] == rows


def test_an_existing_journal_needs_resume_and_the_same_model(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = ray_engine.Journal(tmp_path / "results.jsonl", "0" * 64, LABELS)
    journal.open(resume=False)
    journal.close()
    assert lumen_test(workspace, tmp_path, "--engine", "ray") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert lumen_test(workspace, tmp_path, "--engine", "ray", "--resume") == 2
    assert "another model sha256" in capsys.readouterr().err
    assert not (tmp_path / "predictions.json").exists()


def test_engine_flags_are_checked_before_any_work(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lumen_test(workspace, tmp_path, "--resume") == 2
    assert "need --engine ray" in capsys.readouterr().err
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not used")
    code = main(["--model", str(ckpt), "--dataset-paths", str(workspace["data"]), "--engine", "ray"])
    assert code == 2 and "runs .onnx artifacts" in capsys.readouterr().err
    assert lumen_test(workspace, tmp_path, "--engine", "ray", "--ray-address", "ray://head:10001") == 2
    assert "Submit lumen-test as a Ray Job" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("workers", "device", "resources", "pool"),
    [
        (None, "cpu", {"CPU": 2}, (1, 1, 0)),
        (None, "cpu", {"CPU": 64}, (1, 32, 0)),
        (6, "cpu", {"CPU": 64}, (6, 6, 0)),
        (None, "cuda", {"CPU": 16, "GPU": 4}, (1, 4, 1)),
        (2, "cuda:1", {"CPU": 16, "GPU": 4}, (2, 2, 1)),
    ],
)
def test_actor_pool_plan(workers: int | None, device: str, resources: dict, pool: tuple) -> None:
    plan = ray_engine.plan_pool(workers, device, resources)
    assert (plan.min_size, plan.max_size, plan.num_gpus) == pool


@pytest.mark.parametrize(
    ("workers", "device", "resources", "message"),
    [
        (2, "cpu", {"CPU": 2}, "leave a CPU to decode"),
        (None, "cpu", {"CPU": 1}, "at least 2"),
        (None, "cuda", {"CPU": 8}, "no GPU"),
        (3, "cuda", {"CPU": 8, "GPU": 2}, "only 2 GPU"),
    ],
)
def test_actor_pool_plan_refuses_what_cannot_run(
    workers: int | None, device: str, resources: dict, message: str
) -> None:
    with pytest.raises(EvaluationError, match=message):
        ray_engine.plan_pool(workers, device, resources)
