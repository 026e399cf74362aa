"""A streaming recognition client written like SpeechKit's own Python example, on the stubs that Yandex's
SDK (``yandexcloud``) generated from SpeechKit's protos: the wire-compatibility oracle of the service.

Run it in a process of its own (its descriptors, ``yandex.cloud.ai.stt.v2``, must never meet the
project's copies of the same names in one process)::

    python tests/support/yandex_stream_client.py --address 127.0.0.1:8089 --key KEY --path audio.pcm \
        --encoding LINEAR16_PCM --rate 16000 --chunk-bytes 12800 [--pace 0.4] [--language en-US]

It prints one JSON object per line: each response's first chunk (``{"final", "end_of_utterance",
"text", "t"}``, ``t`` the seconds since the first message was sent), and at the end
``{"status": "OK"}`` or ``{"status": <code name>, "details": <message>}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

import grpc
from yandex.cloud.ai.stt.v2 import stt_service_pb2, stt_service_pb2_grpc


def gen(
    args: argparse.Namespace, started: list[float]
) -> Iterator[stt_service_pb2.StreamingRecognitionRequest]:
    # Specify the recognition settings.
    specification = stt_service_pb2.RecognitionSpec(
        language_code=args.language,
        profanity_filter=False,
        model="general",
        partial_results=True,
        audio_encoding=args.encoding,
        sample_rate_hertz=args.rate,
    )
    streaming_config = stt_service_pb2.RecognitionConfig(specification=specification, folder_id="b1gfolder")

    # Send a message with the recognition settings.
    started.append(time.monotonic())
    yield stt_service_pb2.StreamingRecognitionRequest(config=streaming_config)

    # Read the audio file and send its contents in chunks.
    with open(args.path, "rb") as f:
        data = f.read(args.chunk_bytes)
        while data != b"":
            yield stt_service_pb2.StreamingRecognitionRequest(audio_content=data)
            if args.pace:
                time.sleep(args.pace)
            data = f.read(args.chunk_bytes)


def run(args: argparse.Namespace) -> int:
    # Establish a connection with the server (no TLS on loopback).
    channel = grpc.insecure_channel(args.address)
    stub = stt_service_pb2_grpc.SttServiceStub(channel)
    started: list[float] = []
    metadata = (("authorization", f"Api-Key {args.key}"),) if args.key else ()

    # Send data for recognition.
    it = stub.StreamingRecognize(gen(args, started), metadata=metadata, timeout=args.timeout)

    # Process server responses and print them.
    try:
        for r in it:
            chunk = r.chunks[0]
            print(
                json.dumps(
                    {
                        "final": chunk.final,
                        "end_of_utterance": chunk.end_of_utterance,
                        "text": chunk.alternatives[0].text if chunk.alternatives else "",
                        "t": round(time.monotonic() - started[0], 3),
                    }
                ),
                flush=True,
            )
    except grpc.RpcError as err:
        print(json.dumps({"status": err.code().name, "details": err.details()}), flush=True)
        return 0
    print(json.dumps({"status": "OK"}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--path", required=True, help="audio file path")
    parser.add_argument("--encoding", default="LINEAR16_PCM")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--language", default="en-US")
    parser.add_argument("--chunk-bytes", type=int, default=12800)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds to wait after each chunk")
    parser.add_argument("--timeout", type=float, default=120.0, help="the call's deadline")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
