"""How much each track's sound source and recording vary: the options and their presets.

A model trained on dry General-MIDI renders learns the soundfont, not the instrument: real
recordings come through a room, a microphone, a preamp and a player who bends and detunes. These
options say how often each of those is simulated (``*_prob``: the chance a track gets it) and over
what range; :mod:`training.synth.acoustics` (room, EQ, dynamics, noise) and
:mod:`training.synth.expression` (detune, bends, vibrato) and
:mod:`training.synth.effects` (an electric guitar's pedals and amplifier) apply them. ``dry`` changes nothing, so
the output of the default settings stays what it always was; ``varied`` is what the demo model
trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Variation:
    room_prob: float = 0.0  # synthetic room impulse response (size and RT60 drawn per track)
    rt60: tuple[float, float] = (0.2, 1.6)  # seconds to decay by 60 dB
    eq_prob: float = 0.0  # microphone / preamp colouring: high-pass, roll-off, resonances, tilt
    dynamics_prob: float = 0.0  # a compressor with random threshold, ratio, attack and release
    noise_prob: float = 0.0  # white / pink / brown noise, sometimes mains hum
    snr_db: tuple[float, float] = (12.0, 45.0)
    detune_cents: float = 0.0  # tuning reference offset per track (+ a quarter of it per part)
    bend_prob: float = 0.0  # per note: scoops, falls, string bends where the instrument has them
    vibrato_prob: float = 0.0  # per part: pitch-wheel vibrato of random rate and depth on long notes
    min_peak: float = 0.5  # clips are peak-normalised to a level in min_peak..0.95
    isolated_prob: float = 0.0  # per solo track: isolated notes (a sample-library take) instead of a line
    amp_prob: float = 0.0  # per electric-guitar part: pedals and amplifier (drive, cabinet, modulation, echo)

    def validate(self) -> Variation:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{f.name.replace('_', '-')} must be within 0..1, got {value}")
        if not 0.05 <= self.rt60[0] <= self.rt60[1] <= 4.0:
            raise ValueError(f"--rt60 needs 0.05 <= MIN <= MAX <= 4 seconds, got {self.rt60}")
        if not -10.0 <= self.snr_db[0] <= self.snr_db[1]:
            raise ValueError(f"--snr-db needs -10 <= MIN <= MAX, got {self.snr_db}")
        if not 0.0 <= self.detune_cents <= 100.0:
            raise ValueError(f"--detune-cents must be within 0..100, got {self.detune_cents}")
        if not 0.01 <= self.min_peak <= 0.95:
            raise ValueError(f"--min-peak must be within 0.01..0.95, got {self.min_peak}")
        return self

    @property
    def changes_pitch(self) -> bool:
        return self.detune_cents > 0 or self.bend_prob > 0 or self.vibrato_prob > 0

    @property
    def changes_sound(self) -> bool:
        return self.room_prob > 0 or self.eq_prob > 0 or self.dynamics_prob > 0 or self.noise_prob > 0

    # amp_prob is neither: it acts on electric-guitar stems before the mix, from its own random stream.


DRY = Variation()
VARIED = Variation(
    room_prob=0.75,
    eq_prob=0.8,
    dynamics_prob=0.4,
    noise_prob=0.6,
    detune_cents=20.0,
    bend_prob=0.25,
    vibrato_prob=0.5,
    min_peak=0.1,
)
PRESETS: dict[str, Variation] = {"dry": DRY, "varied": VARIED}
