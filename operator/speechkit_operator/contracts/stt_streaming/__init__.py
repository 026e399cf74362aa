"""SpeechKit's streaming recognition API v2 over gRPC (``yandex.cloud.ai.stt.v2.SttService``).

The wire contract is :file:`stt_service.proto` (written from SpeechKit's documentation, with SpeechKit's
package, names and numbers) and its generated stubs, :mod:`.stt_service_pb2` and :mod:`.stt_service_pb2_grpc`
(regenerate them with :mod:`.generate`). This module holds what the protos do not say: the method's
path, SpeechKit's endpoint, the documented session limits and defaults. The ``stream`` client and the
self-hosted service both use it; importing it loads neither grpc nor protobuf.

A session::

    -> StreamingRecognitionRequest{config: {specification: {languageCode, model, profanityFilter,
                                                             partialResults, audioEncoding,
                                                             sampleRateHertz}, folderId}}
    -> StreamingRecognitionRequest{audio_content: <bytes>}  (about 400 ms of audio every 400 ms)
    ...
    <- StreamingRecognitionResponse{chunks: [{alternatives: [{text, confidence}], final, endOfUtterance}]}

With ``partialResults`` the service also answers ``final=false`` chunks while an utterance goes on; each
utterance ends with a ``final=true`` chunk that has ``endOfUtterance``. Authentication is the metadata
``authorization: Api-Key <key>`` (or ``Bearer <IAM token>`` at SpeechKit).
"""

from __future__ import annotations

from typing import Final

from speechkit_operator.contracts.stt_v2 import (
    DEFAULT_LANGUAGE,
    DEFAULT_MODEL,
    DEFAULT_SAMPLE_RATE,
    SUPPORTED_PCM_RATES,
)

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_LANGUAGE",
    "DEFAULT_MODEL",
    "DEFAULT_SAMPLE_RATE",
    "LIMIT_CODE",
    "MAX_MESSAGE_INTERVAL_SECONDS",
    "MAX_SESSION_AUDIO_SECONDS",
    "MAX_SESSION_BYTES",
    "RECOMMENDED_CHUNK_SECONDS",
    "SERVICE_NAME",
    "SPEECHKIT_ENDPOINT",
    "STREAMING_ENCODINGS",
    "STREAMING_RECOGNIZE_METHOD",
    "SUPPORTED_PCM_RATES",
]

#: The gRPC service (also the name its health status is reported under).
SERVICE_NAME: Final = "yandex.cloud.ai.stt.v2.SttService"
#: The method's full path.
STREAMING_RECOGNIZE_METHOD: Final = f"/{SERVICE_NAME}/StreamingRecognize"
#: SpeechKit's own endpoint (TLS).
SPEECHKIT_ENDPOINT: Final = "stt.api.cloud.yandex.net:443"
#: The self-hosted service's gRPC port unless ``SPEECHKIT_SERVE_GRPC_PORT`` says otherwise.
DEFAULT_GRPC_PORT: Final = 8089

#: The encodings streaming takes (``RecognitionSpec.AudioEncoding`` names); OGG_OPUS is the default.
STREAMING_ENCODINGS: Final = ("LINEAR16_PCM", "OGG_OPUS")

# --- The documented limits of one session -------------------------------------------------------------

#: At most this long between two messages of the client.
MAX_MESSAGE_INTERVAL_SECONDS: Final = 5.0
#: At most this much audio in one session.
MAX_SESSION_AUDIO_SECONDS: Final = 5 * 60.0
#: At most this many bytes of audio in one session ("10 MB").
MAX_SESSION_BYTES: Final = 10 * 1024 * 1024
#: The pace the documentation recommends: this much audio every this many seconds.
RECOMMENDED_CHUNK_SECONDS: Final = 0.4
#: The status a session that exceeds a limit ends with. SpeechKit documents three codes for
#: StreamingRecognize: INVALID_ARGUMENT (the client's request is wrong, with details), UNAUTHENTICATED and
#: INTERNAL (the server's fault); a client breaking a session limit is the first.
LIMIT_CODE: Final = "INVALID_ARGUMENT"
