"""Speech-like audio made by the package itself, for the built-in default subject.

A source-filter synthesiser: a glottal pulse train (f0 with slow drift and jitter) shaped by the formants of
a vowel (second-order resonators), preceded by a consonant (a noise burst, a nasal murmur or a closure),
syllable by syllable, with an amplitude envelope and pauses. Each syllable records its timing, vowel and
consonant, so a mouth track can be derived from exactly what is heard (`ggtalker_jax.data.default_subject`):
that gives the A2E prior a real audio-to-mouth relation to learn, offline.

Voices differ by f0 range and formant scale (vocal-tract length); "languages" by syllable inventory and
rhythm. Deterministic given the seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Vowel -> (F1, F2, F3) Hz for an adult male vocal tract, plus openness in [0, 1], spread, rounding.
VOWELS = {
    "a": ((730, 1090, 2440), 1.00, 0.3, 0.0),
    "e": ((530, 1840, 2480), 0.55, 0.7, 0.0),
    "i": ((270, 2290, 3010), 0.20, 1.0, 0.0),
    "o": ((570, 840, 2410), 0.60, 0.0, 0.8),
    "u": ((300, 870, 2240), 0.25, 0.0, 1.0),
}
# Consonant -> kind: "stop" (closure + burst), "bilabial" (lips pressed, then burst), "nasal", "fricative".
CONSONANTS = {"p": "bilabial", "b": "bilabial", "m": "bilabial_nasal", "t": "stop", "d": "stop", "k": "stop",
              "n": "nasal", "s": "fricative", "f": "fricative", "l": "liquid", "": "none"}


@dataclasses.dataclass(frozen=True)
class Voice:
    f0_low: float = 100.0
    f0_high: float = 160.0
    formant_scale: float = 1.0      # > 1: shorter vocal tract (higher formants)
    syllables_per_second: float = 4.0
    consonants: tuple[str, ...] = ("p", "b", "m", "t", "d", "k", "n", "s", "f", "l", "")
    vowels: tuple[str, ...] = ("a", "e", "i", "o", "u")
    pause_probability: float = 0.12


VOICES = {
    "subject": Voice(),
    "other_speaker": Voice(f0_low=170.0, f0_high=260.0, formant_scale=1.17, syllables_per_second=4.6),
    "other_language": Voice(f0_low=120.0, f0_high=220.0, formant_scale=1.08, syllables_per_second=5.5,
                            consonants=("t", "k", "s", "n", "l", ""), vowels=("a", "i", "u"),
                            pause_probability=0.05),
}


@dataclasses.dataclass(frozen=True)
class Syllable:
    start: float        # seconds
    consonant_end: float
    end: float
    consonant: str
    vowel: str          # "" for a pause
    loudness: float


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """Second-order IIR resonance (formant filter) with unit gain at DC removed."""
    from scipy.signal import lfilter
    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    b = [1.0 - r]
    return lfilter(b, a, x)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(np.square(x))) + 1e-12)


def openness_gain(vowel: str) -> float:
    """Open vowels are louder (as in real speech), which ties loudness to jaw opening."""
    return 0.25 + 0.35 * VOWELS[vowel][1]


def plan_syllables(seconds: float, voice: Voice, rng: np.random.Generator) -> list[Syllable]:
    out, t = [], 0.15
    while t < seconds - 0.1:
        if rng.random() < voice.pause_probability:
            d = rng.uniform(0.15, 0.35)
            out.append(Syllable(t, t, min(t + d, seconds), "", "", 0.0))
            t += d
            continue
        d = rng.uniform(0.7, 1.3) / voice.syllables_per_second
        cons = voice.consonants[rng.integers(len(voice.consonants))]
        c_len = 0.0 if cons == "" else min(0.35 * d, rng.uniform(0.04, 0.09))
        out.append(Syllable(t, t + c_len, min(t + d, seconds), cons,
                            voice.vowels[rng.integers(len(voice.vowels))], float(rng.uniform(0.6, 1.0))))
        t += d
    return out


def synth_speech(seconds: float, sr: int = 16000, seed: int = 0, voice: str | Voice = "subject"):
    """Returns (wav float32 [S] in [-1, 1], syllables list[Syllable])."""
    if seconds <= 0:
        raise ValueError(f"synth_speech: seconds must be positive, got {seconds}")
    v = VOICES[voice] if isinstance(voice, str) else voice
    rng = np.random.default_rng(seed)
    syllables = plan_syllables(seconds, v, rng)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    # Glottal source: f0 contour (slow random walk within the voice's range) + jitter -> pulse train.
    knots = np.linspace(0, seconds, max(4, int(seconds * 2)))
    f0 = np.interp(t, knots, rng.uniform(v.f0_low, v.f0_high, knots.shape))
    f0 *= 1.0 + 0.01 * rng.standard_normal(n)
    phase = np.cumsum(f0 / sr)
    source = np.diff(np.floor(phase), prepend=0.0)                   # one impulse per period
    source = np.convolve(source, np.hanning(int(0.004 * sr)), "same")  # soften the pulses
    noise = rng.standard_normal(n)
    wav = np.zeros(n)
    for syl in syllables:
        if not syl.vowel:
            continue
        i0, ic, i1 = (int(x * sr) for x in (syl.start, syl.consonant_end, syl.end))
        formants, _, _, _ = VOWELS[syl.vowel]
        seg = source[ic:i1]
        voiced = sum(_resonator(seg, f * v.formant_scale, 80.0 + 0.05 * f, sr) * g
                     for f, g in zip(formants, (1.0, 0.6, 0.3)))
        env = np.minimum(1.0, np.minimum(np.arange(i1 - ic), np.arange(i1 - ic)[::-1]) / (0.02 * sr))
        wav[ic:i1] += syl.loudness * openness_gain(syl.vowel) * _unit_rms(voiced) * env
        kind = CONSONANTS[syl.consonant]
        if ic > i0:
            cn = noise[i0:ic]
            if kind in ("fricative",):
                burst = _resonator(cn, 4500.0 * v.formant_scale, 2000.0, sr) * 0.3
            elif kind in ("nasal", "bilabial_nasal", "liquid"):
                burst = _resonator(source[i0:ic], 250.0 * v.formant_scale, 100.0, sr) * 0.5
            else:  # stops: silence (closure) then a short burst at the release
                burst = np.zeros(ic - i0)
                k = max(1, int(0.012 * sr))
                burst[-k:] = _resonator(cn[-k:], 1500.0 * v.formant_scale, 1500.0, sr) * 0.6
            wav[i0:ic] += syl.loudness * 0.15 * _unit_rms(burst) * (np.abs(burst) > 0)
    wav += 0.002 * noise                                              # room noise floor
    wav = wav / (np.max(np.abs(wav)) + 1e-9) * 0.8
    return wav.astype(np.float32), syllables


def mouth_targets(syllables: list[Syllable], num_frames: int, fps: float) -> dict:
    """Per video frame targets in [0, 1] derived from what is heard: `open` (jaw), `spread`, `round`,
    `press` (lips closed for bilabials) -> dict of [T] arrays, smoothed (coarticulation)."""
    t = (np.arange(num_frames) + 0.5) / fps
    out = {k: np.zeros(num_frames, np.float32) for k in ("open", "spread", "round", "press")}
    for syl in syllables:
        if not syl.vowel:
            continue
        _, openness, spread, rounding = VOWELS[syl.vowel]
        mid = (syl.consonant_end + syl.end) / 2
        half = max((syl.end - syl.consonant_end) / 2, 1e-3)
        w = np.clip(1.0 - np.abs(t - mid) / (half * 1.3), 0.0, 1.0) ** 0.7
        out["open"] = np.maximum(out["open"], syl.loudness * openness * w)
        out["spread"] = np.maximum(out["spread"], spread * w)
        out["round"] = np.maximum(out["round"], rounding * w)
        if CONSONANTS[syl.consonant].startswith("bilabial"):
            c = (syl.start + syl.consonant_end) / 2
            out["press"] = np.maximum(out["press"], np.clip(1.0 - np.abs(t - c) / 0.06, 0.0, 1.0))
    kernel = np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)
    kernel /= kernel.sum()
    return {k: np.convolve(v, kernel, "same").astype(np.float32) for k, v in out.items()}
