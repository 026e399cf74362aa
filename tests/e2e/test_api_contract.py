"""The TranscriptionJob API as a real kube-apiserver serves it from deploy/crds/.

What the CRD promises (validation with useful messages, CEL rules, defaults, an unpruned status behind
the status subresource, printer columns, the short name and the category) is checked against the
server itself, each test in a fresh namespace.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.components import KubeCluster, Response
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logic.output_keys import s3_uri
from speechkit_operator.logic.transitions import Facts, submitted, succeeded, waiting
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.job import (
    LANGUAGE_PATTERN,
    RAW_RESULTS_V3_MESSAGE,
    RESTRICTION_LANGUAGE_MESSAGE,
    SPEAKERS_MONO_MESSAGE,
    V3_ONLY_MESSAGE,
    Reason,
)
from speechkit_operator.models.timestamps import format_time
from tests.e2e.crd_fixtures import InstalledCrd, install_crd

MERGE_PATCH = "application/merge-patch+json"
BUCKET = "call-audio"
SOURCE_KEY = "calls/2024-05-01/interview.wav"
OPERATION_ID = "e03sup6d5h1qr574ht99"
T0 = datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def _job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    crd = InstalledCrd()
    return {"apiVersion": crd.api_version, "kind": crd.kind, "metadata": {"name": name}, "spec": spec}


def _ok(response: Response, *statuses: int) -> Any:
    expected = statuses or (200,)
    assert response.status in expected, (response.status, response.body[:3000])
    return response.json()


class Jobs:
    """TranscriptionJobs of one namespace, over the real API as the admin."""

    def __init__(self, cluster: KubeCluster, crd: InstalledCrd, namespace: str) -> None:
        self.cluster, self.crd, self.namespace = cluster, crd, namespace

    def create(self, name: str, spec: dict[str, Any]) -> Response:
        return self.cluster.request("POST", self.crd.collection(self.namespace), body=_job(name, spec))

    def created(self, name: str, spec: dict[str, Any]) -> Any:
        return _ok(self.create(name, spec), 201)

    def get(self, name: str) -> Any:
        return _ok(self.cluster.request("GET", self.crd.path(self.namespace, name)))

    def patch(self, name: str, patch: dict[str, Any], *, subresource: str = "") -> Response:
        path = self.crd.path(self.namespace, name, subresource)
        return self.cluster.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    def kubectl(self, *args: str, check: bool = True) -> Any:
        return self.cluster.kubectl("--namespace", self.namespace, *args, check=check)


@pytest.fixture
def jobs(kube_cluster: KubeCluster, crd_installed: InstalledCrd, fresh_namespace: str) -> Jobs:
    return Jobs(kube_cluster, crd_installed, fresh_namespace)


def _stereo_audio() -> AudioInfo:
    return AudioInfo(
        encoding=AudioEncoding.LINEAR16_PCM,
        container=ContainerFormat.WAV,
        sample_rate_hertz=16000,
        channels=2,
        duration_seconds=1843.2,
        size_bytes=58_982_444,
    )


#: A status patch as written to the API server.
Status = dict[str, Any]


def _submitted_status(generation: int) -> Status:
    return submitted(
        Facts(now=T0, generation=generation, conditions=[]),
        operation_id=OPERATION_ID,
        audio=_stereo_audio(),
        first_check=T0 + timedelta(seconds=614),
    ).to_patch()


def _succeeded_status(after: Status, generation: int) -> Status:
    base = f"out/{SOURCE_KEY}"
    outputs = {
        "json": s3_uri(BUCKET, f"{base}.json"),
        "txt": s3_uri(BUCKET, f"{base}.txt"),
        "srt:1": s3_uri(BUCKET, f"{base}.channel-1.srt"),
        "srt:2": s3_uri(BUCKET, f"{base}.channel-2.srt"),
        "vtt:1": s3_uri(BUCKET, f"{base}.channel-1.vtt"),
        "vtt:2": s3_uri(BUCKET, f"{base}.channel-2.vtt"),
    }
    return succeeded(
        Facts(
            now=T0 + timedelta(minutes=11, seconds=3), generation=generation, conditions=after["conditions"]
        ),
        checks=3,
        outputs=outputs,
        preview="[channel 1] Добрый день, вы позвонили в службу поддержки.\n[channel 2] Здравствуйте!",
    ).to_patch()


def _without_nulls(status: Status) -> Status:
    """What a merge patch leaves: a null deletes the field."""
    return {key: value for key, value in status.items() if value is not None}


def _table(output: str) -> tuple[list[str], list[dict[str, str]]]:
    """Parse `kubectl get` output by the positions of its header's columns (cells may be empty)."""
    header, *lines = output.rstrip("\n").splitlines()
    columns = [(match.group(), match.start()) for match in re.finditer(r"\S+", header)]
    rows = []
    for line in lines:
        row = {}
        for index, (title, start) in enumerate(columns):
            end = columns[index + 1][1] if index + 1 < len(columns) else None
            row[title] = line[start:end].strip()
        rows.append(row)
    return [title for title, _ in columns], rows


# --------------------------------------------------------------------------- the CRD


def test_installing_the_crd_again_changes_nothing(
    kube_cluster: KubeCluster,
    crd_installed: InstalledCrd,
) -> None:
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_installed.name}"
    before = _ok(kube_cluster.request("GET", path))

    assert install_crd(kube_cluster) == crd_installed
    after = _ok(kube_cluster.request("GET", path))

    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    established = {c["type"]: c["status"] for c in after["status"]["conditions"]}
    assert established["Established"] == "True"
    assert established["NamesAccepted"] == "True"
    assert after["status"]["acceptedNames"]["shortNames"] == ["tj"]
    assert after["status"]["acceptedNames"]["categories"] == ["speechkit"]


# --------------------------------------------------------------------------- validation

VALID_SPEC: dict[str, Any] = {"source": {"bucket": BUCKET, "key": SOURCE_KEY}}
PCM_RULE_MESSAGE = (
    "sampleRateHertz and audioChannelCount apply only to audioEncoding LINEAR16_PCM, "
    "or to an absent audioEncoding (detected from the audio)"
)
KEY_DOT_SEGMENT_MESSAGE = (
    "key must not contain . or .. path segments (such as a/../b.wav or ./a.wav): HTTP clients resolve "
    "them, so another object would be read"
)
PREFIX_DOT_SEGMENT_MESSAGE = (
    "prefix must not contain . or .. path segments (such as ../ or out/./): HTTP clients resolve them, "
    "so the transcripts would be written elsewhere"
)


@pytest.mark.parametrize(
    ("spec", "field", "cause", "fragments"),
    [
        pytest.param(
            {"source": {"bucket": BUCKET}},
            "spec.source.key",
            "FieldValueRequired",
            ["spec.source.key: Required value"],
            id="missing-source-key",
        ),
        pytest.param(
            VALID_SPEC | {"recognition": {"languageCode": "english"}},
            "spec.recognition.languageCode",
            "FieldValueInvalid",
            [
                'spec.recognition.languageCode: Invalid value: "english"',
                f"should match '{LANGUAGE_PATTERN}'",
            ],
            id="bad-language-code",
        ),
        pytest.param(
            VALID_SPEC | {"output": {"formats": ["json", "docx"]}},
            "spec.output.formats[1]",
            "FieldValueNotSupported",
            [
                'spec.output.formats[1]: Unsupported value: "docx"',
                'supported values: "json", "txt", "srt", "vtt"',
            ],
            id="unknown-output-format",
        ),
        pytest.param(
            VALID_SPEC | {"recognition": {"sampleRateHertz": 44100}},
            "spec.recognition.sampleRateHertz",
            "FieldValueNotSupported",
            [
                "spec.recognition.sampleRateHertz: Unsupported value: 44100",
                'supported values: "8000", "16000", "48000"',
            ],
            id="sample-rate-out-of-range",
        ),
        pytest.param(
            VALID_SPEC | {"recognition": {"audioEncoding": "MP3", "sampleRateHertz": 16000}},
            "spec.recognition",
            "FieldValueInvalid",
            [f"spec.recognition: Invalid value: {PCM_RULE_MESSAGE}"],
            id="sample-rate-with-mp3",
        ),
        pytest.param(
            VALID_SPEC | {"recognition": {"audioEncoding": "OGG_OPUS", "audioChannelCount": 2}},
            "spec.recognition",
            "FieldValueInvalid",
            [f"spec.recognition: Invalid value: {PCM_RULE_MESSAGE}"],
            id="channel-count-with-ogg-opus",
        ),
        *(
            pytest.param(
                {"source": {"bucket": BUCKET, "key": key}},
                "spec.source.key",
                "FieldValueInvalid",
                ["spec.source.key: Invalid value: ", KEY_DOT_SEGMENT_MESSAGE],
                id=f"dot-segments-in-key-{key}",
            )
            for key in ("a/../b.wav", "./a.wav", "a/./b", "..", "calls/..")
        ),
        pytest.param(
            VALID_SPEC | {"output": {"prefix": "../elsewhere/"}},
            "spec.output.prefix",
            "FieldValueInvalid",
            ["spec.output.prefix: Invalid value: ", PREFIX_DOT_SEGMENT_MESSAGE],
            id="dot-segments-in-prefix",
        ),
    ],
)
def test_invalid_jobs_are_rejected_with_a_message_naming_the_field(
    jobs: Jobs, spec: dict[str, Any], field: str, cause: str, fragments: list[str]
) -> None:
    response = jobs.create("invalid", spec)

    assert response.status == 422, (response.status, response.body[:2000])
    body = response.json()
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('TranscriptionJob.speechkit.dev "invalid" is invalid: '), body[
        "message"
    ]
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body["message"])
    # Exactly the field under test is blamed (the rest of the spec is valid), with the right reason.
    spec_causes = [c for c in body["details"]["causes"] if c.get("field", "").startswith("spec")]
    assert [(c["field"], c["reason"]) for c in spec_causes] == [(field, cause)], body["details"]
    # Nothing was stored.
    assert jobs.cluster.request("GET", jobs.crd.path(jobs.namespace, "invalid")).status == 404


@pytest.mark.parametrize(
    ("recognition", "message"),
    [
        ({"textNormalization": True}, V3_ONLY_MESSAGE),
        ({"api": "v2", "speakerLabeling": False}, V3_ONLY_MESSAGE),
        ({"api": "v3", "rawResults": True}, RAW_RESULTS_V3_MESSAGE),
        (
            {"api": "v3", "speakerLabeling": True, "audioEncoding": "LINEAR16_PCM", "audioChannelCount": 2},
            SPEAKERS_MONO_MESSAGE,
        ),
        (
            {"api": "v3", "languageRestriction": {"type": "whitelist", "languages": ["ru-RU"]}},
            RESTRICTION_LANGUAGE_MESSAGE,
        ),
    ],
)
def test_the_v3_rules_refuse_what_the_api_would_with_the_models_messages(
    jobs: Jobs, recognition: dict[str, Any], message: str
) -> None:
    """The CEL rules of spec.recognition, on a real API server (their syntax and cost included)."""
    response = jobs.create("v3-invalid", VALID_SPEC | {"recognition": recognition})
    assert response.status == 422, (response.status, response.body[:2000])
    assert " ".join(message.split()) in " ".join(response.json()["message"].split())


def test_a_valid_v3_recognition_is_stored_as_given(jobs: Jobs) -> None:
    recognition = {
        "api": "v3",
        "languageCode": "auto",
        "textNormalization": True,
        "phoneFormatting": False,
        "languageRestriction": {"type": "blacklist", "languages": ["kk-KZ", "uz-UZ"]},
        "speakerLabeling": True,
    }
    created = jobs.created("v3-valid", VALID_SPEC | {"recognition": recognition})
    assert created["spec"]["recognition"].items() >= recognition.items()
    defaulted = jobs.created("v2-default", VALID_SPEC)
    assert defaulted["spec"]["recognition"]["api"] == "v2"


def test_the_pcm_rule_admits_pcm_settings_for_pcm_and_detected_encodings(jobs: Jobs) -> None:
    """The CEL rule is no broader than documented: PCM fields pass with LINEAR16_PCM or no encoding."""
    recognitions: dict[str, dict[str, Any]] = {
        "pcm": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000, "audioChannelCount": 2},
        "detected": {"sampleRateHertz": 48000, "audioChannelCount": 8},
        "mp3": {"audioEncoding": "MP3"},
    }
    for name, recognition in recognitions.items():
        created = jobs.created(name, VALID_SPEC | {"recognition": recognition})
        assert created["spec"]["recognition"].items() >= recognition.items()


def test_the_dot_segment_rule_admits_names_that_only_contain_dots(jobs: Jobs) -> None:
    """Only whole ``.`` and ``..`` segments are refused: dots inside names are ordinary characters."""
    for index, (key, prefix) in enumerate(
        [("...", "out/"), (".hidden/a.wav", ".out/"), ("a..b/..c.wav", "x../"), ("calls/a.", "out.")]
    ):
        created = jobs.created(
            f"dots-{index}", {"source": {"bucket": BUCKET, "key": key}, "output": {"prefix": prefix}}
        )
        assert (created["spec"]["source"]["key"], created["spec"]["output"]["prefix"]) == (key, prefix)


def test_kubectl_reports_validation_errors(jobs: Jobs, tmp_path: Path) -> None:
    manifest = tmp_path / "job.json"
    manifest.write_text(
        json.dumps(_job("english", VALID_SPEC | {"recognition": {"languageCode": "english"}}))
    )

    result = jobs.kubectl("apply", "-f", str(manifest), check=False)

    assert result.returncode != 0
    assert 'The TranscriptionJob "english" is invalid' in result.stderr, result.stderr
    assert 'spec.recognition.languageCode: Invalid value: "english"' in result.stderr, result.stderr


def test_spec_is_immutable_but_status_and_metadata_are_not(jobs: Jobs) -> None:
    created = jobs.created("immutable", VALID_SPEC)
    assert created["metadata"]["generation"] == 1

    # kubectl: the CEL rule's message is what the user sees.
    result = jobs.kubectl(
        "patch",
        "tj",
        "immutable",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"recognition": {"languageCode": "en-US"}}}),
        check=False,
    )
    assert result.returncode != 0
    assert (
        "spec: Invalid value: spec is immutable: delete and re-create the TranscriptionJob to change it"
        in result.stderr
    ), result.stderr

    # The API: a changed source key is refused the same way, and blamed on `spec`.
    refused = jobs.patch("immutable", {"spec": {"source": {"key": "calls/other.wav"}}})
    assert refused.status == 422, refused.body
    assert "spec is immutable" in refused.json()["message"]
    assert [c["field"] for c in refused.json()["details"]["causes"]] == ["spec"]

    after = jobs.get("immutable")
    assert after["spec"] == created["spec"]
    assert after["metadata"]["generation"] == 1

    # The operator's writes still go through: the status subresource ...
    status = waiting(
        Facts(now=T0, generation=1, conditions=[]),
        Reason.CREDENTIALS_SECRET_NOT_FOUND,
        'Secret "speechkit-credentials" not found in the namespace',
    ).to_patch()
    written = _ok(jobs.patch("immutable", {"status": status}, subresource="status"))
    assert written["status"] == _without_nulls(status)
    # ... even carrying a spec (which the status subresource ignores instead of refusing) ...
    ignored = _ok(
        jobs.patch(
            "immutable",
            {"spec": {"source": {"key": "calls/other.wav"}}, "status": {"checks": 0}},
            subresource="status",
        )
    )
    assert ignored["spec"] == created["spec"]
    assert ignored["status"] == _without_nulls(status) | {"checks": 0}
    # ... and metadata: kopf's annotations and finalizers on the main resource.
    annotated = _ok(
        jobs.patch(
            "immutable",
            {
                "metadata": {
                    "annotations": {"speechkit.dev/last-handled-configuration": "{}"},
                    "finalizers": ["speechkit.dev/finalizer"],
                }
            },
        )
    )
    assert annotated["metadata"]["finalizers"] == ["speechkit.dev/finalizer"]
    assert annotated["metadata"]["annotations"]["speechkit.dev/last-handled-configuration"] == "{}"
    released = _ok(jobs.patch("immutable", {"metadata": {"finalizers": None}}))
    assert "finalizers" not in released["metadata"]
    assert released["metadata"]["generation"] == 1, "status and metadata writes do not bump the generation"
    assert released["spec"] == created["spec"]


# --------------------------------------------------------------------------- defaults


def test_the_server_applies_the_documented_defaults(jobs: Jobs) -> None:
    minimal = jobs.created("minimal", VALID_SPEC)

    assert minimal["spec"] == {
        "source": {"bucket": BUCKET, "key": SOURCE_KEY},
        "output": {"prefix": "out/", "formats": ["json", "txt", "srt", "vtt"]},
        "recognition": {
            "languageCode": "ru-RU",
            "model": "general",
            "profanityFilter": False,
            "literatureText": False,
            "rawResults": False,
            "api": "v2",
        },
        "priority": 0,
    }
    assert jobs.get("minimal")["spec"] == minimal["spec"], "the defaults are stored, not only returned"

    # Defaults fill in what is missing and never replace what the user wrote.
    partial = jobs.created(
        "partial",
        VALID_SPEC
        | {"output": {"formats": ["txt"]}, "recognition": {"languageCode": "auto", "model": "general:rc"}},
    )
    assert partial["spec"]["output"] == {"prefix": "out/", "formats": ["txt"]}
    assert partial["spec"]["recognition"]["languageCode"] == "auto"
    assert partial["spec"]["recognition"]["model"] == "general:rc"
    assert partial["spec"]["recognition"]["profanityFilter"] is False
    empty_prefix = jobs.created("top-level", VALID_SPEC | {"output": {"prefix": ""}})
    assert empty_prefix["spec"]["output"]["prefix"] == "", "an explicit empty prefix is kept"


# --------------------------------------------------------------------------- status


def test_the_full_status_is_stored_unpruned_behind_the_status_subresource(jobs: Jobs) -> None:
    jobs.created("interview", VALID_SPEC)

    # The operator's two big writes, as merge patches of the status subresource.
    running = _submitted_status(generation=1)
    written = _ok(jobs.patch("interview", {"status": running}, subresource="status"))["status"]
    assert written == _without_nulls(running)
    assert jobs.get("interview")["status"] == _without_nulls(running)

    done = _succeeded_status(running, generation=1)
    assert done["nextCheckAt"] is None, "the succeeded transition clears the next check"
    _ok(jobs.patch("interview", {"status": done}, subresource="status"))
    expected = _without_nulls(running | done)
    stored = jobs.get("interview")["status"]

    assert stored == expected
    # Spot checks of what a pruning schema would have lost first.
    assert stored["outputs"]["srt:2"] == s3_uri(BUCKET, f"out/{SOURCE_KEY}.channel-2.srt")
    assert stored["audio"] == {
        "encoding": "LINEAR16_PCM",
        "sampleRateHertz": 16000,
        "channels": 2,
        "durationSeconds": 1843.2,
        "sizeBytes": 58_982_444,
    }
    assert [c["type"] for c in stored["conditions"]] == ["Submitted", "Succeeded"]
    assert all(c["observedGeneration"] == 1 for c in stored["conditions"])
    assert stored["observedGeneration"] == 1
    assert "nextCheckAt" not in stored
    assert stored["submittedAt"] == format_time(T0) == "2024-05-01T10:00:00.250Z"

    # The comparison can see pruning: a field the schema does not declare is dropped.
    _ok(jobs.patch("interview", {"status": {"undeclared": "dropped"}}, subresource="status"))
    assert jobs.get("interview")["status"] == expected

    # The main endpoint ignores status: only the status subresource writes it.
    hijack = {"status": {"phase": "Failed", "reason": "Hijacked", "outputs": {"json": "s3://elsewhere/x"}}}
    through_main = _ok(jobs.patch("interview", hijack))
    assert through_main["status"] == expected
    replaced = copy.deepcopy(jobs.get("interview"))
    replaced["status"] = {"phase": "Pending"}
    put = _ok(jobs.cluster.request("PUT", jobs.crd.path(jobs.namespace, "interview"), body=replaced))
    assert put["status"] == expected
    assert jobs.get("interview")["status"] == expected


def test_a_status_write_for_another_uid_lands_and_its_answer_says_so(jobs: Jobs) -> None:
    """The status subresource copies the stored object's metadata before applying a write: a uid
    in the patch is no precondition there (resourceVersion is). The answer carries the stored
    object's uid, which is how the client finds out post hoc that its job was replaced under the
    same name (clients/kube.py); a status the schema refuses is a 422 that names no uid."""
    created = jobs.created("interview", VALID_SPEC)
    other = {"metadata": {"uid": "00000000-0000-0000-0000-000000000000"}, "status": {"phase": "Running"}}
    answer = _ok(jobs.patch("interview", other, subresource="status"))
    assert answer["metadata"]["uid"] == created["metadata"]["uid"]
    assert answer["status"]["phase"] == "Running"
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "status": {}}
    assert jobs.patch("interview", stale, subresource="status").status == 409
    invalid = {"status": {"phase": "Sleeping"}}
    refused = jobs.patch("interview", invalid, subresource="status")
    assert refused.status == 422, refused.body[:2000]
    assert "metadata.uid" not in refused.body.decode()


# --------------------------------------------------------------------------- kubectl


def test_printer_columns_show_the_status(jobs: Jobs) -> None:
    jobs.created("interview", VALID_SPEC | {"recognition": {"languageCode": "kk-KZ"}})
    running = _submitted_status(generation=1)
    done = _succeeded_status(running, generation=1)
    _ok(jobs.patch("interview", {"status": running}, subresource="status"))
    _ok(jobs.patch("interview", {"status": done}, subresource="status"))
    jobs.created("queued", VALID_SPEC)
    pending = waiting(
        Facts(now=T0, generation=1, conditions=[]), Reason.CREDENTIALS_SECRET_NOT_FOUND, "Secret not found"
    ).to_patch()
    _ok(jobs.patch("queued", {"status": pending}, subresource="status"))

    titles, rows = _table(jobs.kubectl("get", "tj").stdout)
    assert titles == ["NAME", "PHASE", "LANGUAGE", "DURATION", "AGE"]
    by_name = {row["NAME"]: row for row in rows}
    assert set(by_name) == {"interview", "queued"}
    assert {k: v for k, v in by_name["interview"].items() if k != "AGE"} == {
        "NAME": "interview",
        "PHASE": "Succeeded",
        "LANGUAGE": "kk-KZ",
        "DURATION": "1843.2",
    }
    assert {k: v for k, v in by_name["queued"].items() if k != "AGE"} == {
        "NAME": "queued",
        "PHASE": "Pending",
        "LANGUAGE": "ru-RU",
        "DURATION": "",
    }
    for row in rows:
        assert re.fullmatch(r"\d+s", row["AGE"]), row  # created seconds ago

    titles, rows = _table(jobs.kubectl("get", "tj", "-o", "wide").stdout)
    assert titles == ["NAME", "PHASE", "LANGUAGE", "DURATION", "AGE", "OPERATION", "MESSAGE"]
    by_name = {row["NAME"]: row for row in rows}
    assert by_name["interview"]["OPERATION"] == OPERATION_ID
    assert by_name["interview"]["MESSAGE"] == done["message"]
    assert done["message"] == "transcripts written: json, srt:1, srt:2, txt, vtt:1, vtt:2"
    assert by_name["queued"]["OPERATION"] == ""
    assert by_name["queued"]["MESSAGE"] == "Secret not found"


def test_short_name_and_category_list_the_jobs(jobs: Jobs) -> None:
    names = {"first", "second"}
    for name in names:
        jobs.created(name, VALID_SPEC)
    expected = {f"transcriptionjob.speechkit.dev/{name}" for name in names}

    for resource in ("tj", "speechkit", "transcriptionjobs", "transcriptionjobs.speechkit.dev"):
        listed = jobs.kubectl("get", resource, "-o", "name").stdout.split()
        assert sorted(listed) == sorted(expected), (resource, listed)
