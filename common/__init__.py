"""Torch-free core shared by training, export and serving.

Only numpy, soundfile, soxr and msgspec may be imported here (a test enforces that torch is not).
"""

from common.version import __version__

__all__ = ["__version__"]
