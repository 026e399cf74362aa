"""The streaming contract: the committed stubs are what the generator makes of the proto, and the proto says
on the wire what SpeechKit's own does (read from Yandex's SDK, in a process of its own, so that its
descriptors never meet ours)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, ServiceDescriptor

from speechkit_operator.contracts import stt_streaming
from speechkit_operator.contracts.stt_streaming import generate
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb

#: Describes the streaming part of a stt_service_pb2 module as JSON; run with the module's name.
DESCRIBE = r"""
import importlib, json, sys

module = importlib.import_module(sys.argv[1])
file = module.DESCRIPTOR
MESSAGES = sys.argv[2].split(",")


def field(f):
    return {
        "number": f.number,
        "type": f.type,
        "label": "repeated" if f.is_repeated else "single",
        "message": f.message_type.full_name if f.message_type else None,
        "enum": f.enum_type.full_name if f.enum_type else None,
        "oneof": f.containing_oneof.name if f.containing_oneof else None,
    }


def message(d):
    return {
        "full_name": d.full_name,
        "fields": {f.name: field(f) for f in d.fields},
        "enums": {e.name: {v.name: v.number for v in e.values} for e in d.enum_types},
        "oneofs": sorted(o.name for o in d.oneofs),
    }


service = file.services_by_name["SttService"]
method = service.methods_by_name["StreamingRecognize"]
print(json.dumps({
    "package": file.package,
    "service": service.full_name,
    "method": {
        "input": method.input_type.full_name,
        "output": method.output_type.full_name,
        "client_streaming": method.client_streaming,
        "server_streaming": method.server_streaming,
    },
    "messages": {name: message(file.message_types_by_name[name]) for name in MESSAGES},
}, sort_keys=True))
"""


def _ours() -> dict[str, Any]:
    file: FileDescriptor = pb.DESCRIPTOR
    names = ",".join(file.message_types_by_name)
    found = subprocess.run(
        [sys.executable, "-c", DESCRIBE, pb.__name__, names],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    described: dict[str, Any] = json.loads(found.stdout)
    return described


def test_the_committed_stubs_are_what_the_generator_makes(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)

    assert [path.relative_to(tmp_path).as_posix() for path in written] == list(generate.GENERATED)
    for path in written:
        committed = generate.SOURCE_ROOT / path.relative_to(tmp_path)
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed.name} differs from what the generator makes of stt_service.proto: run "
            "python -m speechkit_operator.contracts.stt_streaming.generate and commit the result"
        )


def test_the_proto_is_speechkits_on_the_wire() -> None:
    """Every message of ours, field by field (name, number, type, label, oneof) and enum by enum, is
    SpeechKit's, and so is the method; SpeechKit's has more (LongRunningRecognize), which we leave out."""
    ours = _ours()
    names = ",".join(ours["messages"])
    theirs = subprocess.run(
        [sys.executable, "-c", DESCRIBE, "yandex.cloud.ai.stt.v2.stt_service_pb2", names],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(theirs.stdout) == ours
    assert set(ours["messages"]) == {
        "StreamingRecognitionRequest",
        "StreamingRecognitionResponse",
        "RecognitionConfig",
        "RecognitionSpec",
        "SpeechRecognitionChunk",
        "SpeechRecognitionAlternative",
        "WordInfo",
    }


def test_the_contract_constants_match_the_descriptor() -> None:
    service: ServiceDescriptor = pb.DESCRIPTOR.services_by_name["SttService"]
    assert service.full_name == stt_streaming.SERVICE_NAME
    assert f"/{service.full_name}/StreamingRecognize" == stt_streaming.STREAMING_RECOGNIZE_METHOD
    spec: Descriptor = pb.RecognitionSpec.DESCRIPTOR
    encodings = {value.name for value in spec.enum_types_by_name["AudioEncoding"].values}
    assert set(stt_streaming.STREAMING_ENCODINGS) <= encodings
    field: FieldDescriptor = spec.fields_by_name["sample_rate_hertz"]
    assert field.number == 2
    # The seed's client sets the enum by its name; a message round-trips through bytes.
    request = pb.StreamingRecognitionRequest(
        config=pb.RecognitionConfig(
            specification=pb.RecognitionSpec(audio_encoding="LINEAR16_PCM")  # type: ignore[arg-type]
        )
    )
    assert pb.StreamingRecognitionRequest.FromString(request.SerializeToString()) == request
