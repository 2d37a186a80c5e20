"""Parameters of every augmentation: typed defaults, the ``--aug-kwargs`` keys that override them, checks.

Each augmentation has one frozen dataclass; its fields are the knobs. The ``--aug-kwargs`` key of a
field is ``<augmentation name in lower case>_<field>``, e.g. ``sum_n_samples_n=3``,
``time_stretch_factor_range=0.8,1.25``, ``timeinv_p=1``. Mechanical names mean there is nothing to
remember and no two augmentations can claim the same key. Ranges are ``lo,hi`` (a single number
fixes the value). Every augmentation has ``p``: the probability that an example of the batch is
augmented (drawn independently per example).

No tensor code here: the CLI parses and checks ``--aug-kwargs`` (and prints their help) before any
batch exists, and a bad key fails before a run starts rather than at its first training step.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from training.config import AUGMENTATIONS, ConfigError

Range = tuple[float, float]

COLOR_EXPONENTS: dict[str, float] = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0, "violet": 2.0}
"""Noise colour -> slope of its power spectral density, ``PSD ∝ f ** exponent``."""

CLIP_MODES: tuple[str, ...] = ("hard", "soft")
SHIFT_MODES: tuple[str, ...] = ("wrap", "zeros")


class AugmentationError(ConfigError):
    """Bad augmentation settings or noise folder; the message names the ``--aug-kwargs`` key and the fix."""


def _doc(default: Any, doc: str) -> Any:
    """A field with its one-line help (shown by :func:`aug_kwargs_help`)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class SumNSamples:
    """SUM_N_SAMPLES: add up to n - 1 other batch examples to each example."""

    p: float = _doc(0.5, "probability that an example becomes a mix")
    n: int = _doc(3, "most examples in one mix (itself included); 1..n-1 partners are drawn uniformly")
    gain_range: Range = _doc((0.4, 1.0), "linear gain of each mixed example before peak renormalisation")


@dataclass(frozen=True)
class SumTwoSamples:
    """SUM_TWO_SAMPLES: add exactly one other batch example (SUM_N_SAMPLES with n=2, own probability)."""

    p: float = _doc(0.5, "probability that an example becomes a two-example mix")
    gain_range: Range = _doc((0.4, 1.0), "linear gain of each of the two examples before renormalisation")


@dataclass(frozen=True)
class ConcatNSamples:
    """CONCAT_N_SAMPLES: the window becomes consecutive segments of up to n batch examples."""

    p: float = _doc(0.3, "probability that an example is cut into segments of several examples")
    n: int = _doc(3, "most examples per window (itself included); 1..n-1 partners are drawn uniformly")


@dataclass(frozen=True)
class BackgroundNoise:
    """BACKGROUND_NOISE: add a random crop of a recording from a folder at a random SNR."""

    p: float = _doc(0.5, "probability that an example gets background noise")
    dir: str | None = _doc(None, "folder searched recursively for noise recordings (required)")
    snr_db_range: Range = _doc((5.0, 30.0), "signal-to-noise ratio in dB, drawn uniformly")


@dataclass(frozen=True)
class TimeStretch:
    """TIME_STRETCH: change tempo, keep pitch (phase vocoder), crop or zero-pad back to the window."""

    p: float = _doc(0.5, "probability that an example is stretched")
    factor_range: Range = _doc((0.8, 1.25), "speed factor (>1 faster), drawn log-uniformly")


@dataclass(frozen=True)
class TimeShift:
    """TIME_SHIFT: shift the window in time by a random number of samples."""

    p: float = _doc(0.5, "probability that an example is shifted")
    max_fraction: float = _doc(0.5, "largest shift, as a fraction of the window, in either direction")
    mode: str = _doc("wrap", "'wrap' rolls samples around, 'zeros' fills the gap with silence")


@dataclass(frozen=True)
class Pitch:
    """PITCH: shift pitch by a random number of semitones, keep duration."""

    p: float = _doc(0.5, "probability that an example is pitch-shifted")
    semitone_range: Range = _doc((-2.0, 2.0), "shift in semitones, drawn uniformly")


@dataclass(frozen=True)
class Speed:
    """SPEED: play faster or slower (resampling): pitch, formants and tempo all scale together."""

    p: float = _doc(0.5, "probability that an example's speed is changed")
    semitone_range: Range = _doc((-2.0, 2.0), "speed change in semitones (ratio 2**(s/12)), drawn uniformly")


@dataclass(frozen=True)
class ColorNoise:
    """COLOR_NOISE: add synthetic coloured Gaussian noise at a random SNR."""

    p: float = _doc(0.5, "probability that an example gets coloured noise")
    colors: tuple[str, ...] = _doc(("white", "pink", "brown"), "colours drawn from, uniformly")
    snr_db_range: Range = _doc((10.0, 40.0), "signal-to-noise ratio in dB, drawn uniformly")


@dataclass(frozen=True)
class TimeInv:
    """TIMEINV: polarity inversion (x -> -x): inaudible, yet a new input for waveform models (wav2vec)."""

    p: float = _doc(0.5, "probability that an example's polarity is inverted")


@dataclass(frozen=True)
class NormAfterTimeAugs:
    """NORM_AFTER_TIME_AUGS: restore each example's peak after the time-domain augmentations."""

    p: float = _doc(1.0, "probability that an example is renormalised")


@dataclass(frozen=True)
class SevenBandEq:
    """SEVEN_BAND_EQ: random gain on 7 log-spaced bands, interpolated smoothly in log-frequency."""

    p: float = _doc(0.5, "probability that an example is equalised")
    gain_db_range: Range = _doc((-6.0, 6.0), "gain of each band in dB, drawn uniformly per band")


@dataclass(frozen=True)
class Clipping:
    """CLIPPING: clip at a random fraction of the example's peak, hard or soft (tanh)."""

    p: float = _doc(0.3, "probability that an example is clipped")
    threshold_range: Range = _doc((0.3, 0.9), "clip level as a fraction of the example's peak")
    modes: tuple[str, ...] = _doc(CLIP_MODES, "clip shapes drawn from, uniformly: 'hard' and/or 'soft'")


@dataclass(frozen=True)
class TimeMask:
    """TIME_MASK: SpecAugment time masks, filled with the example's mean (log features: 0 is not quiet)."""

    p: float = _doc(0.8, "probability that an example is masked")
    n_masks: int = _doc(2, "masks per example")
    max_fraction: float = _doc(0.1, "widest mask as a fraction of the frames (at least one frame)")


@dataclass(frozen=True)
class FreqMask:
    """FREQ_MASK: SpecAugment frequency masks, filled with the example's mean."""

    p: float = _doc(0.8, "probability that an example is masked")
    n_masks: int = _doc(2, "masks per example")
    max_fraction: float = _doc(0.15, "widest mask as a fraction of the bins (at least one bin)")


@dataclass(frozen=True)
class EnvelopeShift:
    """ENVELOPE_SHIFT: move the spectral envelope (formants, body resonances) up or down the feature bins, keep the harmonics."""

    p: float = _doc(0.5, "probability that an example's envelope is shifted")
    shift_range: Range = _doc((-3.0, 3.0), "shift in feature bins (fractional), drawn uniformly; + is up")
    n_coeffs: int = _doc(
        12, "DCT coefficients along the bins that make up the envelope (the rest is the fine structure)"
    )


@dataclass(frozen=True)
class RandomErase:
    """RANDOM_ERASE: rectangles of the feature map set to the example's mean."""

    p: float = _doc(0.5, "probability that an example gets erased rectangles")
    n_rects: int = _doc(1, "rectangles per example")
    size_range: Range = _doc((0.05, 0.3), "height and width of a rectangle as fractions of the map")


@dataclass(frozen=True)
class RandomPixels:
    """RANDOM_PIXELS: scattered feature-map cells set to the example's mean (dropout on the input)."""

    p: float = _doc(0.5, "probability that an example gets pixel dropout")
    rate_range: Range = _doc((0.01, 0.1), "fraction of cells dropped, drawn uniformly per example")


PARAMS: dict[str, type] = {
    "CONCAT_N_SAMPLES": ConcatNSamples,
    "SUM_N_SAMPLES": SumNSamples,
    "SUM_TWO_SAMPLES": SumTwoSamples,
    "BACKGROUND_NOISE": BackgroundNoise,
    "TIME_STRETCH": TimeStretch,
    "TIME_SHIFT": TimeShift,
    "PITCH": Pitch,
    "SPEED": Speed,
    "COLOR_NOISE": ColorNoise,
    "TIMEINV": TimeInv,
    "TIME_MASK": TimeMask,
    "NORM_AFTER_TIME_AUGS": NormAfterTimeAugs,
    "FREQ_MASK": FreqMask,
    "ENVELOPE_SHIFT": EnvelopeShift,
    "RANDOM_ERASE": RandomErase,
    "RANDOM_PIXELS": RandomPixels,
    "SEVEN_BAND_EQ": SevenBandEq,
    "CLIPPING": Clipping,
}
"""Augmentation name -> its parameter dataclass (same names, same order as ``AUGMENTATIONS``)."""


def key_of(name: str, field_name: str) -> str:
    """The ``--aug-kwargs`` key of one parameter of one augmentation."""
    return f"{name.lower()}_{field_name}"


def _fields(name: str) -> dict[str, Any]:
    """Field name -> resolved type hint for the augmentation ``name``."""
    cls = PARAMS[name]
    hints = typing.get_type_hints(cls, globalns=globals())
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_KEYS: dict[str, tuple[str, str, Any]] = {
    key_of(name, fname): (name, fname, hint) for name in PARAMS for fname, hint in _fields(name).items()
}
"""Every ``--aug-kwargs`` key -> (augmentation, field, type); keys are unique by construction."""


def valid_keys(names: list[str] | tuple[str, ...]) -> list[str]:
    """The ``--aug-kwargs`` keys the augmentations ``names`` accept, in a stable order."""
    return [key for key, (name, _, _) in _KEYS.items() if name in names]


def check_names(names: list[str] | tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in PARAMS]
    if unknown:
        raise AugmentationError(
            f"--augmentations {unknown} not known; choose from: {', '.join(AUGMENTATIONS)}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AugmentationError(f"--augmentations lists {repeated} more than once; list each at most once")


def _unknown_key(key: str, names: list[str] | tuple[str, ...] | None) -> AugmentationError:
    if names is None:
        return AugmentationError(f"--aug-kwargs {key!r} is not a known key; valid keys: {', '.join(_KEYS)}")
    if key in _KEYS:
        owner = _KEYS[key][0]
        return AugmentationError(
            f"--aug-kwargs {key!r} configures {owner}, which is not in --augmentations; add {owner} or drop the key"
        )
    keys = valid_keys(names)
    listing = ", ".join(keys) if keys else "none (no augmentations chosen)"
    return AugmentationError(
        f"--aug-kwargs {key!r} is not a key of the chosen augmentations; valid keys: {listing}"
    )


def _scalar(text: str) -> Any:
    """CLI text -> bool / None / int / float, or the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _is_text(hint: Any) -> bool:
    return hint is str or (isinstance(hint, types.UnionType) and str in typing.get_args(hint))


def parse_aug_kwargs(items: list[str], names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """``["key=value", "key2=v1,v2"]`` (the ``--aug-kwargs`` flag) -> ``{key: typed value}``.

    Numbers, booleans (true/false) and none are parsed, and a comma makes a list; text parameters
    (the noise folder) are kept verbatim so a path may hold commas. Keys are checked against every
    augmentation, and against ``names`` when given, so a typo fails here, before training starts.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AugmentationError(f"--aug-kwargs {item!r} is not key=value (e.g. sum_n_samples_n=3)")
        if key not in _KEYS or (names is not None and _KEYS[key][0] not in names):
            raise _unknown_key(key, names)
        if key in parsed:
            raise AugmentationError(f"--aug-kwargs {key!r} is given twice; keep one")
        hint = _KEYS[key][2]
        if _is_text(hint):
            parsed[key] = None if text.strip().lower() in ("none", "null") else text
        elif "," in text:
            parsed[key] = [_scalar(part) for part in text.split(",")]
        else:
            parsed[key] = _scalar(text)
    if names is not None:
        resolve_params(names, parsed)
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """A parsed or YAML value -> the field's type, or an error naming the key and the expected form."""
    if hint is float and _is_number(value):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if _is_text(hint) and (isinstance(value, str) or (value is None and hint is not str)):
        return value
    if hint == Range:
        pair = [value, value] if _is_number(value) else value
        if isinstance(pair, list | tuple) and len(pair) == 2 and all(_is_number(v) for v in pair):
            return (float(pair[0]), float(pair[1]))
        raise AugmentationError(f"--aug-kwargs {key}={value!r}: expected lo,hi (two numbers) or one number")
    if hint == tuple[str, ...]:
        words = [value] if isinstance(value, str) else value
        if isinstance(words, list | tuple) and words and all(isinstance(w, str) for w in words):
            return tuple(words)
        raise AugmentationError(f"--aug-kwargs {key}={value!r}: expected one or more comma-separated words")
    expected = {float: "a number", int: "an integer", str: "text"}.get(hint, "text or none")
    raise AugmentationError(f"--aug-kwargs {key}={value!r}: expected {expected}")


def _problems(name: str, params: Any) -> list[tuple[str, str]]:
    """(field, what is wrong) for values of the right type that cannot work."""
    found: list[tuple[str, str]] = []
    if not 0.0 <= params.p <= 1.0:
        found.append(("p", "must be a probability in [0, 1]"))
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name.endswith("_range") and value[0] > value[1]:
            found.append((f.name, "lo must not exceed hi"))
    if hasattr(params, "n") and params.n < 2:
        found.append(("n", "must be >= 2 (the example itself plus at least one other)"))
    for count in ("n_masks", "n_rects", "n_coeffs"):
        if hasattr(params, count) and getattr(params, count) < 1:
            found.append((count, "must be >= 1"))
    if hasattr(params, "max_fraction") and not 0.0 < params.max_fraction <= 1.0:
        found.append(("max_fraction", "must be in (0, 1]"))
    for frac in ("size_range", "rate_range", "threshold_range"):
        if hasattr(params, frac) and not 0.0 < getattr(params, frac)[0] <= getattr(params, frac)[1] <= 1.0:
            found.append((frac, "must be fractions in (0, 1]"))
    if name == "BACKGROUND_NOISE" and not params.dir:
        found.append(
            ("dir", "is required: a folder of noise recordings (e.g. background_noise_dir=data/noise)")
        )
    if name == "TIME_STRETCH" and params.factor_range[0] <= 0:
        found.append(("factor_range", "speed factors must be > 0"))
    if name == "TIME_SHIFT" and params.mode not in SHIFT_MODES:
        found.append(("mode", f"must be one of: {', '.join(SHIFT_MODES)}"))
    if name == "COLOR_NOISE" and set(params.colors) - set(COLOR_EXPONENTS):
        found.append(("colors", f"must be among: {', '.join(COLOR_EXPONENTS)}"))
    if name == "CLIPPING" and set(params.modes) - set(CLIP_MODES):
        found.append(("modes", f"must be among: {', '.join(CLIP_MODES)}"))
    return found


def resolve_params(names: list[str] | tuple[str, ...], aug_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``aug_kwargs`` -> ``{name: checked parameter object}`` for ``names``."""
    check_names(names)
    for key in aug_kwargs:
        if key not in _KEYS or _KEYS[key][0] not in names:
            raise _unknown_key(key, names)
    resolved: dict[str, Any] = {}
    for name in names:
        overrides = {
            fname: _coerce(key_of(name, fname), aug_kwargs[key_of(name, fname)], hint)
            for fname, hint in _fields(name).items()
            if key_of(name, fname) in aug_kwargs
        }
        params = PARAMS[name](**overrides)
        problems = _problems(name, params)
        if problems:
            fname, reason = problems[0]
            value = getattr(params, fname)
            raise AugmentationError(f"--aug-kwargs {key_of(name, fname)}={value!r}: {reason}")
        resolved[name] = params
    return resolved


def aug_kwargs_help(names: list[str] | tuple[str, ...] | None = None) -> str:
    """``key=default  help`` for every key of ``names`` (all augmentations if None): the CLI's help text."""
    lines = []
    for name, cls in PARAMS.items():
        if names is not None and name not in names:
            continue
        lines.append(f"{name}: {cls.__doc__.split(': ', 1)[1]}")
        for f in dataclasses.fields(cls):
            lines.append(f"  {key_of(name, f.name)}={_show(f.default)}  {f.metadata['doc']}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    """A default as it would be typed after ``--aug-kwargs key=``."""
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return "none" if value is None else str(value)


def describe_params(params: Any) -> str:
    """``p=0.5 n=3 gain_range=(0.4, 1.0)``: the effective values, for logs and the run summary."""
    return " ".join(f"{f.name}={getattr(params, f.name)!r}" for f in dataclasses.fields(params))
