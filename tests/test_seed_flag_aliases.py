"""The seed's flag names still work: ``lumen-test --ckpt`` and ``lumen-serve --path-models``."""

from __future__ import annotations

from pathlib import Path

from serving.cli import build_parser as serve_parser
from serving.cli import settings_from_args
from serving.evaluate_cli import build_parser as test_parser


def test_lumen_test_ckpt_is_the_model_flag() -> None:
    args = test_parser().parse_args(["--ckpt", "runs/best.ckpt", "--dataset-paths", "irmastest:x"])
    assert args.model == Path("runs/best.ckpt")
    assert "--ckpt" in test_parser().format_help()


def test_lumen_serve_path_models_is_the_model_dir_flag(tmp_path: Path) -> None:
    settings = settings_from_args(serve_parser().parse_args(["--path-models", str(tmp_path)]))
    assert settings.model_dir == tmp_path
    assert "--path-models" in serve_parser().format_help()
