"""An in-process emulator of Yandex SpeechKit's async APIs v2 and v3, the Operation API and IAM tokens."""

from tests.emulator.results import RESPONSE_TYPE, Word, build_response, duration_string, words_for_text
from tests.emulator.results_v3 import (
    StreamOptions,
    Utterance,
    build_stream,
    normalize_text,
    utterances_for,
    v3_channel_tag,
)
from tests.emulator.server import (
    GRPC_CODE_BY_HTTP_STATUS,
    IAM_AUDIENCE,
    EmulatedOperation,
    Endpoint,
    ProcessingModel,
    QuotaName,
    SpeechKitEmulator,
)
from tests.emulator.v3 import (
    DELETE_RECOGNITION_PATH,
    GET_RECOGNITION_PATH,
    OPERATION_DESCRIPTION_V3,
    RECOGNIZE_PATH,
    V3InvalidRequestError,
    V3Request,
    parse_recognize_file_request,
)

__all__ = [
    "DELETE_RECOGNITION_PATH",
    "GET_RECOGNITION_PATH",
    "GRPC_CODE_BY_HTTP_STATUS",
    "IAM_AUDIENCE",
    "OPERATION_DESCRIPTION_V3",
    "RECOGNIZE_PATH",
    "RESPONSE_TYPE",
    "EmulatedOperation",
    "Endpoint",
    "ProcessingModel",
    "QuotaName",
    "SpeechKitEmulator",
    "StreamOptions",
    "Utterance",
    "V3InvalidRequestError",
    "V3Request",
    "Word",
    "build_response",
    "build_stream",
    "duration_string",
    "normalize_text",
    "parse_recognize_file_request",
    "utterances_for",
    "v3_channel_tag",
    "words_for_text",
]
