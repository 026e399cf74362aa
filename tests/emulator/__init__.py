"""An in-process emulator of Yandex SpeechKit's async API v2 (with the Operation and IAM token APIs)."""

from tests.emulator.results import RESPONSE_TYPE, Word, build_response, duration_string, words_for_text
from tests.emulator.server import (
    GRPC_CODE_BY_HTTP_STATUS,
    IAM_AUDIENCE,
    EmulatedOperation,
    Endpoint,
    ProcessingModel,
    SpeechKitEmulator,
)

__all__ = [
    "GRPC_CODE_BY_HTTP_STATUS",
    "IAM_AUDIENCE",
    "RESPONSE_TYPE",
    "EmulatedOperation",
    "Endpoint",
    "ProcessingModel",
    "SpeechKitEmulator",
    "Word",
    "build_response",
    "duration_string",
    "words_for_text",
]
