"""The package version, stamped into checkpoints and artifacts."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lumen-audio")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
