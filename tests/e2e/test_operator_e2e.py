"""The operator as users run it: the chart's least-privilege identity, on a real control plane and MinIO.

`speechkit-operator run --all-namespaces` runs as a subprocess with a kubeconfig holding a
TokenRequest token of the chart's ServiceAccount (bound by the chart's rendered ClusterRole), never
the admin's. A permission the chart forgets makes these tests fail: a job that cannot be patched
never reaches a final phase, one whose Secrets cannot be read stays Pending, and every test ends by
checking the operator's log for denied requests and tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from devstack.components import KubeCluster
from speechkit_operator.constants import GROUP, JOB_PLURAL
from tests.e2e.operator_fixtures import (
    E2E,
    FOLDER_ID,
    OPERATOR_NAMESPACE,
    RELEASE,
    SERVICE_ACCOUNT,
    OperatorIdentity,
    access_allowed,
    log_problems,
)
from tests.support.audio import reference_text

#: The async tests share the module's event loop with the emulator and the operator fixtures.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

#: Every permission the chart grants, and why: (apiGroup, resource) -> verbs. Nothing else.
#: Removing any verb makes the runs below fail with a 403 in the log (checked by hand on this
#: cluster, one verb at a time).
EXPECTED_RULES: dict[tuple[str, str], set[str]] = {
    # list + watch: kopf lists and then watches TranscriptionJobs across the cluster.
    # get: a job is read afresh when it changed under a step (a resourceVersion conflict).
    # patch: kopf removes the finalizer that an earlier version of the operator left on jobs.
    # delete: jobs past their ttlSecondsAfterFinished.
    # create: a TranscriptionBatch's jobs.
    (GROUP, JOB_PLURAL): {"list", "watch", "get", "patch", "delete", "create"},
    # patch: the intent, phase, operationId, outputs and conditions go through the status subresource.
    (GROUP, f"{JOB_PLURAL}/status"): {"patch"},
    # Batches are watched; their counts go through the status subresource.
    (GROUP, "transcriptionbatches"): {"list", "watch", "get", "patch"},
    (GROUP, "transcriptionbatches/status"): {"patch"},
    # create: the operator posts core/v1 Events (Submitted, Succeeded, Failed, RetryScheduled, ...).
    ("", "events"): {"create"},
    # get: the credentials and storage Secrets a job names are read by name, never listed/watched.
    ("", "secrets"): {"get"},
    # list + watch: kopf watches CRDs to notice its resource appear, change and disappear.
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}

SRT_TIMING = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})$")
VTT_TIMING = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})$")
#: words_for_text() lays the first word out at 0.3 s: the first cue must start there.
FIRST_WORD_SECONDS = 0.3


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_cues(text: str, *, vtt: bool) -> list[tuple[float, float, str]]:
    """(start, end, text) of every cue of an SRT or WebVTT file; asserts the file's structure."""
    blocks = [block.splitlines() for block in text.strip().split("\n\n")]
    if vtt:
        header = blocks.pop(0)
        assert header[0] == "WEBVTT", header
    cues = []
    for number, lines in enumerate(blocks, start=1):
        block = lines
        if not vtt:
            assert block[0] == str(number), f"SRT cue {number} is numbered {block[0]!r}"
            block = block[1:]
        elif not VTT_TIMING.match(block[0]):
            block = block[1:]  # an optional cue identifier
        timing = (VTT_TIMING if vtt else SRT_TIMING).match(block[0])
        assert timing, f"not a cue timing: {block[0]!r}"
        start, end = _seconds(*timing.groups()[:4]), _seconds(*timing.groups()[4:])
        assert start < end, block
        assert block[1:], f"cue {number} has no text"
        cues.append((start, end, " ".join(block[1:])))
    starts = [cue[0] for cue in cues]
    assert starts == sorted(starts), "cues are out of order"
    return cues


def assert_subtitles(text: str, expected_words: str, *, vtt: bool) -> None:
    cues = parse_cues(text, vtt=vtt)
    assert " ".join(cue[2] for cue in cues) == expected_words
    assert cues[0][0] == pytest.approx(FIRST_WORD_SECONDS, abs=0.001)


def describe_events(output: str) -> set[tuple[str, str]]:
    """(type, reason) of the rows of `kubectl describe`'s Events table."""
    _, found, table = output.partition("\nEvents:")
    assert found, f"no Events section in:\n{output}"
    return set(re.findall(r"^\s+(Normal|Warning)\s+(\S+)\s", table, re.MULTILINE))


# --------------------------------------------------------------------------- least privilege


def test_cluster_role_grants_exactly_what_the_operator_uses(chart_rbac: list[dict[str, Any]]) -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in chart_rbac)
    assert kinds == [
        ("ClusterRole", RELEASE),
        ("ClusterRoleBinding", RELEASE),
        ("Role", f"{RELEASE}-leader-election"),
        ("RoleBinding", f"{RELEASE}-leader-election"),
        ("ServiceAccount", SERVICE_ACCOUNT),
    ]
    # Leader election: create a Lease in the release namespace, then read and renew that one only.
    lease_role = next(doc for doc in chart_rbac if doc["kind"] == "Role")
    assert lease_role["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["speechkit-operator"],
            "verbs": ["get", "update"],
        },
        # The processing pace learned per model, kept across restarts.
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["speechkit-operator-predictions"],
            "verbs": ["get", "patch"],
        },
    ]
    role = next(doc for doc in chart_rbac if doc["kind"] == "ClusterRole")
    assert "aggregationRule" not in role
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        # No resourceNames, no nonResourceURLs: only these three keys.
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        values = [*rule["apiGroups"], *rule["resources"], *rule["verbs"]]
        assert not any("*" in value for value in values), f"wildcard in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES

    binding = next(doc for doc in chart_rbac if doc["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": RELEASE,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}
    ]
    account = next(doc for doc in chart_rbac if doc["kind"] == "ServiceAccount")
    assert account["metadata"]["namespace"] == OPERATOR_NAMESPACE


def test_the_applied_identity_is_denied_everything_else(
    kube_cluster: KubeCluster, operator_identity: OperatorIdentity
) -> None:
    token = operator_identity.token
    for (group, resource), verbs in EXPECTED_RULES.items():
        name, _, subresource = resource.partition("/")
        namespace = "" if name == "customresourcedefinitions" else "default"
        for verb in verbs:
            assert access_allowed(
                kube_cluster, token, verb, name, group=group, subresource=subresource, namespace=namespace
            ), (verb, group, resource)
    denied = [
        ("list", "", "secrets", ""),
        ("watch", "", "secrets", ""),
        ("create", "", "secrets", ""),
        ("update", "", "secrets", ""),
        ("create", GROUP, "transcriptionbatches", ""),
        ("update", GROUP, JOB_PLURAL, ""),
        ("deletecollection", GROUP, JOB_PLURAL, ""),
        ("update", GROUP, JOB_PLURAL, "status"),
        ("patch", "", "events", ""),
        ("create", "events.k8s.io", "events", ""),
        ("get", "", "pods", ""),
        ("get", "", "configmaps", ""),
        ("create", "coordination.k8s.io", "leases", ""),
        ("create", "kopf.dev", "kopfpeerings", ""),
    ]
    for verb, group, resource, subresource in denied:
        assert not access_allowed(
            kube_cluster, token, verb, resource, group=group, subresource=subresource
        ), (verb, group, resource, subresource)
    for verb, group, resource in [
        ("list", "", "namespaces"),
        ("get", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("update", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
    ]:
        assert not access_allowed(kube_cluster, token, verb, resource, group=group, namespace=""), (
            verb,
            group,
            resource,
        )
    assert operator_identity.kubeconfig.read_text().count(kube_cluster.admin_token) == 0


def test_log_problem_detection() -> None:
    """The log check must notice a denied request and a traceback, and not a timestamp's milliseconds."""
    assert log_problems("2026-01-02 03:04:05,403 INFO     kopf.objects: Handler 'submit' succeeded.") == []
    assert log_problems("x: nextCheckAt 2026-01-02T03:04:05.403Z, op e03403abc") == []
    assert log_problems("job ns-e2e403/bulk-008 submitted as operation e03pb75gpp4b4agq403k") == []
    assert log_problems("x: status=403")
    forbidden = "2026-01-02 03:04:05,100 ERROR    kopf: APIForbiddenError: ('transcriptionjobs is forbidden')"
    assert log_problems(forbidden) == [forbidden]
    assert log_problems("a: Secret x/y could not be read (HTTP 403 Forbidden)")
    assert log_problems("(403)\nReason: whatever")
    assert log_problems("Traceback (most recent call last):")


# --------------------------------------------------------------------------- the operator at work


@in_module_loop
async def test_wav_job_succeeds_with_every_output(e2e: E2E) -> None:
    name = "librivox-0870.wav"
    key = e2e.upload(name)
    expected = reference_text(name)["1"]

    await e2e.create_job("meeting", key)
    status = await e2e.wait_for_phase("meeting", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert status["reason"] == "Succeeded"
    assert status["operationId"]
    assert status["audio"] == {
        "encoding": "LINEAR16_PCM",
        "sampleRateHertz": 16000,
        "channels": 1,
        "durationSeconds": pytest.approx(7.1, abs=0.05),
        "sizeBytes": 227244,
    }
    assert status["outputs"] == {
        fmt: f"s3://{e2e.bucket}/out/{key}.{fmt}" for fmt in ("json", "txt", "srt", "vtt")
    }
    assert status["preview"] == expected
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Submitted"] == "True" and conditions["Succeeded"] == "True"

    txt, txt_type = e2e.read_output(status["outputs"]["txt"])
    assert txt == expected + "\n"
    assert txt_type == "text/plain; charset=utf-8"
    raw, json_type = e2e.read_output(status["outputs"]["json"])
    assert json_type == "application/json; charset=utf-8"
    response = json.loads(raw)
    # The operation's response, exactly as SpeechKit returned it.
    assert response == e2e.speechkit.operations[status["operationId"]].response
    words = [w["word"] for chunk in response["chunks"] for w in chunk["alternatives"][0]["words"]]
    assert " ".join(words) == expected
    srt, srt_type = e2e.read_output(status["outputs"]["srt"])
    assert srt_type == "application/x-subrip; charset=utf-8"
    assert_subtitles(srt, expected, vtt=False)
    vtt, vtt_type = e2e.read_output(status["outputs"]["vtt"])
    assert vtt_type == "text/vtt; charset=utf-8"
    assert_subtitles(vtt, expected, vtt=True)

    # SpeechKit got one submission, at the WAV header's rate, with the Secret's folder.
    submissions = e2e.submissions_for(key)
    assert len(submissions) == 1, submissions
    specification = submissions[0]["config"]["specification"]
    assert specification["sampleRateHertz"] == 16000
    assert specification["audioEncoding"] == "LINEAR16_PCM"
    assert specification["languageCode"] == "en-US"
    assert submissions[0]["config"]["folderId"] == FOLDER_ID

    # What a user sees with kubectl.
    await e2e.wait_for_event("meeting", "Succeeded")
    described = await e2e.kubectl("describe", "tj", "meeting", "-n", e2e.namespace)
    events = describe_events(described.stdout)
    assert {("Normal", "Submitted"), ("Normal", "Succeeded")} <= events, described.stdout
    assert not any(kind == "Warning" for kind, _ in events), described.stdout
    e2e.assert_operator_log_clean()


@in_module_loop
async def test_stereo_wav_gets_per_channel_subtitles_and_a_labelled_transcript(e2e: E2E) -> None:
    name = "librivox-stereo-0880L-0930R.wav"
    key = e2e.upload(name)
    channel_text = reference_text(name)

    await e2e.create_job("call", key)
    status = await e2e.wait_for_phase("call", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert status["audio"]["channels"] == 2
    base = f"s3://{e2e.bucket}/out/{key}"
    assert status["outputs"] == {
        "json": f"{base}.json",
        "txt": f"{base}.txt",
        "srt:1": f"{base}.channel-1.srt",
        "srt:2": f"{base}.channel-2.srt",
        "vtt:1": f"{base}.channel-1.vtt",
        "vtt:2": f"{base}.channel-2.vtt",
    }
    for channel in ("1", "2"):
        srt, _ = e2e.read_output(status["outputs"][f"srt:{channel}"])
        assert_subtitles(srt, channel_text[channel], vtt=False)
        vtt, _ = e2e.read_output(status["outputs"][f"vtt:{channel}"])
        assert_subtitles(vtt, channel_text[channel], vtt=True)
    txt, _ = e2e.read_output(status["outputs"]["txt"])
    assert sorted(txt.splitlines()) == [f"[channel {c}] {channel_text[c]}" for c in ("1", "2")]

    submissions = e2e.submissions_for(key)
    assert len(submissions) == 1
    assert submissions[0]["config"]["specification"]["audioChannelCount"] == 2
    e2e.assert_operator_log_clean()


@in_module_loop
async def test_a_v3_job_of_stereo_audio_goes_through_api_v3_on_the_real_stack(e2e: E2E) -> None:
    """recognition.api v3 on the real kube-apiserver and MinIO: submitted once to recognizeFileAsync (a WAV
    container of two channels, normalization), its streamed results become per-channel outputs numbered
    from 1 as for v2, and the json keeps the stream."""
    name = "librivox-stereo-0880L-0930R.wav"
    key = e2e.upload(name, key=f"v3/{name}")
    channel_text = reference_text(name)

    await e2e.create_job(
        "v3-call", key, recognition={"api": "v3", "languageCode": "en-US", "textNormalization": True}
    )
    status = await e2e.wait_for_phase("v3-call", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    base = f"s3://{e2e.bucket}/out/{key}"
    assert status["outputs"]["srt:1"] == f"{base}.channel-1.srt"
    assert status["outputs"]["srt:2"] == f"{base}.channel-2.srt"
    for channel in ("1", "2"):
        srt, _ = e2e.read_output(status["outputs"][f"srt:{channel}"])
        assert_subtitles(srt, channel_text[channel], vtt=False)
    raw, _ = e2e.read_output(status["outputs"]["json"])
    results = json.loads(raw)["results"]
    assert {item["result"]["channelTag"] for item in results} == {"0", "1"}
    assert e2e.submissions_for(key) == []  # nothing through v2
    v3 = [body for body in e2e.speechkit.v3_submissions if key in str(body.get("uri", ""))]
    assert len(v3) == 1, v3
    assert v3[0]["recognitionModel"]["audioFormat"] == {"containerAudio": {"containerAudioType": "WAV"}}
    e2e.assert_operator_log_clean()


@pytest.mark.parametrize("api", ["v2", "v3"])
@in_module_loop
async def test_a_killed_operator_is_replaced_without_a_second_submission(e2e: E2E, api: str) -> None:
    """SIGKILL while SpeechKit runs the job, through either API: the new operator polls the same
    operation (``GET /operations/{id}``; v3 then fetches its result) and never submits again."""
    key = e2e.upload("librivox-0880.wav", key=f"incoming/{api}/librivox-0880.wav")
    submit = "submit" if api == "v2" else "v3_submit"
    submits_before = e2e.speechkit.counts[submit]
    name = f"survivor-{api}"
    # Long enough for the job to still be running at SpeechKit while the operator is replaced.
    e2e.speechkit.completion_delay = 5.0
    try:
        await e2e.create_job(name, key, recognition={"api": api, "languageCode": "en-US"})
        running = await e2e.wait_for_job(
            name,
            lambda job: bool(job.get("status", {}).get("operationId")),
            "to record its operation id",
        )
        operation_id = running["status"]["operationId"]
        assert running["status"]["phase"] == "Running"

        await e2e.operator.kill()
        assert not e2e.speechkit.operations[operation_id].done, "the operation finished too early"
        checks_before = e2e.speechkit.counts["operation"]
        await e2e.operator.start()

        status = await e2e.wait_for_phase(name, "Succeeded", "Failed", timeout=60)
    finally:
        e2e.speechkit.completion_delay = 0.3

    assert status["phase"] == "Succeeded", status
    assert status["operationId"] == operation_id
    assert e2e.speechkit.counts[submit] - submits_before == 1
    if api == "v2":
        assert len(e2e.submissions_for(key)) == 1
    else:
        assert e2e.submissions_for(key) == []
        assert len([body for body in e2e.speechkit.v3_submissions if key in str(body.get("uri", ""))]) == 1
    # The new operator picked the job up and checked the same operation.
    assert e2e.speechkit.counts["operation"] > checks_before
    if api == "v3":
        assert e2e.speechkit.operations[operation_id].recognition_fetches >= 1
    txt, _ = e2e.read_output(status["outputs"]["txt"])
    assert txt.strip() == reference_text("librivox-0880.wav")["1"]
    await e2e.wait_for_event(name, "Succeeded")
    reasons = [event["reason"] for event in await e2e.events(name)]
    assert reasons.count("Submitted") == 1, reasons
    e2e.assert_operator_log_clean()


@in_module_loop
async def test_deleting_running_and_succeeded_jobs(e2e: E2E) -> None:
    done_key = e2e.upload("librivox-0930.wav")
    await e2e.create_job("finished", done_key)
    await e2e.wait_for_phase("finished", "Succeeded", "Failed")
    # The operator never puts a finalizer on a job: deleting one works in every phase, with or
    # without the operator.
    finished = await e2e.job("finished")
    assert finished is not None and not finished["metadata"].get("finalizers")

    running_key = e2e.upload("librivox-0890.wav")
    e2e.speechkit.completion_delay = 300.0  # never finishes during this test
    try:
        await e2e.create_job("abandoned", running_key)
        running = await e2e.wait_for_job(
            "abandoned",
            lambda job: job.get("status", {}).get("phase") == "Running",
            "to be Running",
        )
        assert not running["metadata"].get("finalizers")

        for name in ("abandoned", "finished"):
            started = time.monotonic()
            await e2e.kubectl("delete", "tj", name, "-n", e2e.namespace, "--timeout=15s", timeout=30)
            elapsed = time.monotonic() - started
            assert await e2e.job(name) is None, f"{name} still exists after kubectl delete"
            assert elapsed < 10, f"deleting {name} took {elapsed:.1f}s"
    finally:
        e2e.speechkit.completion_delay = 0.3

    # The running job's operation was cancelled at SpeechKit.
    operation_id = running["status"]["operationId"]
    for _ in range(100):
        if operation_id in e2e.speechkit.cancelled:
            break
        await asyncio.sleep(0.1)
    assert e2e.speechkit.cancelled.count(operation_id) == 1
    leftovers = [
        (job["metadata"]["namespace"], job["metadata"]["name"], job["metadata"].get("finalizers"))
        for job in await e2e.all_jobs()
        if job["metadata"].get("deletionTimestamp") or job["metadata"].get("finalizers")
    ]
    assert leftovers == []
    assert [job for job in await e2e.all_jobs() if job["metadata"]["namespace"] == e2e.namespace] == []
    e2e.assert_operator_log_clean()


@in_module_loop
async def test_missing_source_object_fails_with_source_not_found(e2e: E2E) -> None:
    submits_before = e2e.speechkit.counts["submit"]
    await e2e.create_job("ghost", "incoming/never-uploaded.wav")

    status = await e2e.wait_for_phase("ghost", "Failed", "Succeeded")

    assert status["phase"] == "Failed"
    assert status["reason"] == "SourceNotFound"
    assert f"s3://{e2e.bucket}/incoming/never-uploaded.wav" in status["message"]
    assert "operationId" not in status
    failed = await e2e.wait_for_event("ghost", "Failed")
    assert failed["type"] == "Warning"
    assert "SourceNotFound" in failed["message"]
    assert e2e.speechkit.counts["submit"] == submits_before
    e2e.assert_operator_log_clean()
