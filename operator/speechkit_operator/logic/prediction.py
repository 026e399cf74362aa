"""How long SpeechKit takes, per model, learned from finished jobs: the first check comes then.

The documented figure is about 10 s per minute of audio per channel; ``deferred-general`` may take
hours; a self-hosted engine has its own pace. Each finished job gives a sample, processing seconds
per audio second per channel, and the model's rate is a moving average of them (EWMA), starting
from the configured default. The rates are kept across restarts (the scheduler stores them).

Pure: no clock, no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

#: The weight of a new sample in the moving average.
ALPHA = 0.2
#: Samples are clamped to this range (seconds of processing per second of audio per channel), so a
#: stray one (a job that waited in SpeechKit's own queue for a day) cannot wreck the average.
MIN_RATE = 0.001
MAX_RATE = 60.0


@dataclass
class ProcessingRates:
    """Per model: processing seconds per audio second per channel, and how many samples made it."""

    default: float
    rates: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)

    def rate(self, model: str) -> float:
        return self.rates.get(model, self.default)

    def predict(self, model: str, duration_seconds: float | None, channels: int) -> float:
        """Expected processing time in seconds (0 when the duration is unknown)."""
        if not duration_seconds or duration_seconds <= 0 or not math.isfinite(duration_seconds):
            return 0.0
        return self.rate(model) * duration_seconds * max(1, channels)

    def learn(self, model: str, duration_seconds: float | None, channels: int, took_seconds: float) -> bool:
        """Add one finished job; False when it tells nothing (no duration, a negative time)."""
        if (
            not duration_seconds
            or duration_seconds <= 0
            or took_seconds < 0
            or not math.isfinite(took_seconds)
        ):
            return False
        sample = min(MAX_RATE, max(MIN_RATE, took_seconds / (duration_seconds * max(1, channels))))
        previous = self.rates.get(model)
        self.rates[model] = sample if previous is None else (1 - ALPHA) * previous + ALPHA * sample
        self.samples[model] = self.samples.get(model, 0) + 1
        return True

    def to_json(self) -> str:
        return json.dumps(
            {
                model: {"rate": rate, "samples": self.samples.get(model, 0)}
                for model, rate in sorted(self.rates.items())
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, *, default: float) -> ProcessingRates:
        """Rates as :meth:`to_json` wrote them; what cannot be read is left out."""
        learned = cls(default=default)
        try:
            data = json.loads(text)
        except ValueError:
            return learned
        if not isinstance(data, dict):
            return learned
        for model, entry in data.items():
            if not isinstance(entry, dict):
                continue
            rate, samples = entry.get("rate"), entry.get("samples", 0)
            if isinstance(rate, int | float) and not isinstance(rate, bool) and MIN_RATE <= rate <= MAX_RATE:
                learned.rates[str(model)] = float(rate)
                learned.samples[str(model)] = int(samples) if isinstance(samples, int) else 0
        return learned
