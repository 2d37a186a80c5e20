"""Synthetic labelled audio for the eleven IRMAS instruments, rendered with FluidSynth (no torch).

``synthesize(out_dir, layout, per_class, seed)`` writes an ``irmastrain``, ``irmastest`` or ``csv``
dataset that :mod:`common.datasets` reads back; ``lumen-data synth`` is its command line. Modules:
``programs`` (GM programs and ranges per instrument), ``compose`` (notes), ``render`` (FluidSynth),
``layouts`` (what goes where), ``pipeline`` (batching, workers, writing).
"""

from training.synth.layouts import LAYOUTS
from training.synth.pipeline import SynthReport, synthesize
from training.synth.render import SynthError, find_soundfonts

__all__ = ["LAYOUTS", "SynthError", "SynthReport", "find_soundfonts", "synthesize"]
