"""The SpeechKit emulator, primed with the transcript of every file of the shared corpus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.emulator import SpeechKitEmulator, words_for_text
from tests.support.audio import manifest, reference_text


@asynccontextmanager
async def corpus_emulator(api_key: str, completion_delay: float = 0.3) -> AsyncIterator[SpeechKitEmulator]:
    emulator = SpeechKitEmulator(api_keys={api_key}, completion_delay=completion_delay)
    for name in manifest()["files"]:
        emulator.transcripts[name] = {
            channel: words_for_text(text) for channel, text in reference_text(name).items()
        }
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()
