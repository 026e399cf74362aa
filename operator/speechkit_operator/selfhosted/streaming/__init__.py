"""Streaming recognition on the self-hosted service: SpeechKit's v2 ``StreamingRecognize`` over gRPC.

* :mod:`.server`: the grpc.aio server beside the REST API (keys, readiness, the cap on sessions, health);
* :mod:`.session`: one session (config, limits, results);
* :mod:`.decoding`: LINEAR16_PCM and Ogg Opus decoded as they arrive;
* :mod:`.endpointing`: where utterances start and end (pure logic);
* :mod:`.recognition`: utterances recognised in the worker pool.

See ``docs/streaming.md``.
"""
