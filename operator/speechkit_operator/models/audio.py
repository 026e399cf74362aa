"""What the operator learns about an object's audio (its container, encoding, rate, channels, length)."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

from speechkit_operator.contracts.stt_v2 import AudioEncoding


class ContainerFormat(enum.StrEnum):
    """What the object's bytes look like; WAV is LINEAR16_PCM behind a RIFF header."""

    WAV = "wav"
    OGG = "ogg"
    MP3 = "mp3"
    RAW = "raw"


class AudioInfo(BaseModel):
    """Facts about one audio object, as written to ``status.audio``."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    encoding: AudioEncoding
    container: ContainerFormat = Field(exclude=True)
    sample_rate_hertz: int | None = Field(default=None, alias="sampleRateHertz")
    channels: int = 1
    duration_seconds: float | None = Field(default=None, alias="durationSeconds")
    size_bytes: int | None = Field(default=None, alias="sizeBytes")

    def to_status(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
