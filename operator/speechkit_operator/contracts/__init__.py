"""The wire contracts of SpeechKit's APIs, written once: request, operation, result and error shapes, the
codecs of their value types, the paths and the limits.

The operator's speech client and the self-hosted service both speak through these modules; the test
emulator does not (it is the independent oracle). This is the lowest layer of the package: it imports
nothing else of it, and does no I/O.

* :mod:`.grpc`: gRPC status codes, their HTTP statuses, the REST error body;
* :mod:`.duration`: protobuf Duration strings;
* :mod:`.operation`: the Operation API (the object, ids, timestamps, paths);
* :mod:`.stt_v2`: the async recognition API v2 (``longRunningRecognize`` and its result);
* :mod:`.stt_streaming`: streaming recognition v2 over gRPC (``StreamingRecognize``): the proto, its
  generated stubs and the session limits.
"""
