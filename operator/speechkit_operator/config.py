"""The operator's one settings object, read from ``SPEECHKIT_OPERATOR_*`` environment variables.

Every field is documented in README.md ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, FilePath, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    # Unknown variables under the prefix are refused by envconfig.load_settings, which the CLI uses.
    model_config = SettingsConfigDict(env_prefix="SPEECHKIT_OPERATOR_", extra="ignore", frozen=True)

    # --- Scope -----------------------------------------------------------------------------------
    #: Namespaces to watch, comma-separated; empty means the whole cluster.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- SpeechKit ------------------------------------------------------------------------------
    #: ``cloud``: Yandex SpeechKit at the URLs below. ``self-hosted``: the SpeechKit-compatible
    #: service (``speechkit-operator serve``) at ``self_hosted_url``, for both submission and
    #: operations; the same client speaks to both.
    backend: Literal["cloud", "self-hosted"] = "cloud"
    #: Base URL of the self-hosted service, e.g. ``http://speechkit-recognizer.speech:8088``.
    self_hosted_url: HttpUrl | None = None
    #: API key for the self-hosted service (``Authorization: Api-Key``), used for self-hosted jobs that
    #: name no credentials Secret. The Helm chart sets it to the key it generates for the service.
    self_hosted_api_key: SecretStr | None = None
    #: Base URL of the v2 submission API (``POST /speech/stt/v2/longRunningRecognize``).
    stt_url: HttpUrl = HttpUrl("https://transcribe.api.cloud.yandex.net")
    #: Base URL of the Operations API (``GET /operations/{id}``).
    operation_url: HttpUrl = HttpUrl("https://operation.api.cloud.yandex.net")
    #: Base URL of SpeechKit's API v3 (``recognizeFileAsync``, ``getRecognition``), for jobs with
    #: ``recognition.api: v3``.
    stt_v3_url: HttpUrl = HttpUrl("https://stt.api.cloud.yandex.net")
    #: The IAM token exchange for service-account authorized keys.
    iam_token_url: HttpUrl = HttpUrl("https://iam.api.cloud.yandex.net/iam/v1/tokens")
    #: Secret used when a job names no ``credentialsSecret``.
    default_credentials_secret: str = "speechkit-credentials"
    #: Seconds before one HTTP call to SpeechKit or IAM is abandoned.
    http_timeout: float = Field(default=30.0, gt=0)
    #: Attempts per call for transient failures (429, 5xx, connection errors) before the job is retried later.
    retry_attempts: int = Field(default=4, ge=1)
    #: First backoff delay in seconds; doubles per attempt, with full jitter.
    retry_base_delay: float = Field(default=0.5, ge=0)
    #: Longest single backoff delay in seconds.
    retry_max_delay: float = Field(default=30.0, ge=0)

    # --- Network --------------------------------------------------------------------------------
    #: A PEM file of CA certificates trusted for SpeechKit, IAM and S3 over TLS, instead of the
    #: system's (a private CA, a MinIO with its own certificate, a TLS-intercepting proxy).
    #: Proxies come from the usual HTTPS_PROXY, HTTP_PROXY and NO_PROXY variables.
    ca_bundle: FilePath | None = None

    # --- Storage --------------------------------------------------------------------------------
    #: Secret with S3 keys used when a job names no ``storageSecret``.
    default_storage_secret: str = "speechkit-storage"
    #: S3 endpoint used when the storage Secret has no ``endpoint``.
    storage_endpoint: HttpUrl = HttpUrl("https://storage.yandexcloud.net")
    #: S3 region used when the storage Secret has no ``region``.
    storage_region: str = "ru-central1"
    #: Endpoints a storage Secret's ``endpoint`` may name besides ``storage_endpoint`` (always
    #: allowed), comma-separated patterns ``scheme://host[:port]``: ``*`` in the host matches any
    #: characters (``https://*.example.net``); no port means the scheme's default port, ``:*`` any
    #: port. Empty: only ``storage_endpoint``. Any other endpoint is refused
    #: (``StorageEndpointNotAllowed``), so that users who may create Secrets cannot make the operator
    #: connect where they choose.
    storage_endpoints: Annotated[tuple[str, ...], NoDecode] = ()
    #: Give SpeechKit a presigned URL of the source (needed by MinIO and the self-hosted service;
    #: Yandex Object Storage ignores the signature and checks the service account's rights).
    presign_source_urls: bool = True
    #: Lifetime of a presigned source URL in seconds (deferred models may start hours later).
    presign_expiry_seconds: int = Field(default=6 * 3600, ge=60, le=7 * 24 * 3600)

    #: First delay before a job whose submission could not be made (Secret missing, storage or API
    #: unavailable) is tried again; it doubles per attempt up to ``submit_retry_max_seconds``.
    submit_retry_base_seconds: float = Field(default=10.0, gt=0)
    submit_retry_max_seconds: float = Field(default=300.0, gt=0)
    #: Failed attempts to submit (in one operator process) after which a job fails.
    max_submit_attempts: int = Field(default=20, ge=1)
    #: A submission whose answer was lost (a crash, a timeout, a 502/504) may have created an
    #: operation: ``resubmit`` makes it once more (a transcript matters more than a possible second
    #: charge), ``fail`` ends the job. Either way the job records ``SubmissionUncertain``.
    uncertain_submission_policy: Literal["resubmit", "fail"] = "resubmit"
    #: With ``resubmit``: the uncertain submissions a job may have; the one that reaches this
    #: number fails the job, so a job costs at most this many possible extra charges.
    max_uncertain_submissions: int = Field(default=5, ge=1)

    # --- Jobs' lifetime -----------------------------------------------------------------------
    #: Seconds from creation after which an unfinished job fails ``DeadlineExceeded`` when its spec
    #: sets no ``activeDeadlineSeconds``; 0: no deadline.
    default_active_deadline_seconds: int = Field(default=4 * 24 * 3600, ge=0)
    #: Seconds after finishing after which a job is deleted when its spec sets no
    #: ``ttlSecondsAfterFinished``; unset: finished jobs are kept.
    default_ttl_seconds_after_finished: int | None = Field(default=None, ge=0)

    # --- Quotas (cloud backend) ----------------------------------------------------------------
    #: The window SpeechKit's quotas are counted in (an hour); benchmarks compress it.
    quota_window_seconds: float = Field(default=3600.0, gt=0)
    #: Submissions per window per quota scope (SpeechKit's default: 500 an hour per cloud).
    submit_quota: int = Field(default=500, ge=1)
    #: v2 operation checks per window per quota scope (SpeechKit's default: 2,500 an hour).
    check_quota: int = Field(default=2500, ge=1)
    #: API v3 operation checks (status and results reads) per ``v3_check_window_seconds`` per quota scope
    #: (SpeechKit's default: 5 a second).
    v3_check_quota: int = Field(default=5, ge=2)
    v3_check_window_seconds: float = Field(default=1.0, gt=0)
    #: The share of each quota used steadily; the rest is the burst allowance, so that no window
    #: ever holds more calls than the quota.
    quota_share: float = Field(default=0.996, gt=0, lt=1)
    #: What shares a quota: ``shared``, one budget for every job (one cloud); ``folder-id``, one
    #: budget per ``folder-id`` of the jobs' credentials Secrets (several clouds, one per folder).
    quota_scope: Literal["shared", "folder-id"] = "shared"
    #: Self-hosted backend: the most operations in flight on the recognition service at once. The
    #: operator starts at a quarter of it and learns the service's capacity from its 429s.
    self_hosted_concurrency: int = Field(default=32, ge=1, le=10_000)

    #: The ConfigMap (in the operator's namespace, as the Lease) where the learned processing pace
    #: of each model is kept across restarts; empty: not kept.
    predictions_configmap: str = Field(default="speechkit-operator-predictions", max_length=253)

    # --- Metrics ------------------------------------------------------------------------------
    #: Port of the Prometheus metrics endpoint (``GET /metrics`` on all interfaces); 0: none.
    metrics_port: int = Field(default=8081, ge=0, le=65535)

    # --- Scheduling -----------------------------------------------------------------------------
    #: Checks (and other steps but submissions) that may run at once.
    check_concurrency: int = Field(default=16, ge=1, le=1000)
    #: Seconds the steps in flight get to finish when the operator stops (keep it below the pod's
    #: terminationGracePeriodSeconds).
    shutdown_timeout_seconds: float = Field(default=20.0, ge=0)

    # --- Leader election ------------------------------------------------------------------------
    #: Act only while holding a Lease, so that a second replica (or a second operator started by
    #: hand against the same cluster) waits instead of acting too.
    leader_election: bool = True
    #: Namespace of the Lease; empty: the pod's namespace (POD_NAMESPACE, or the service account's),
    #: else the kubeconfig context's, else ``default``.
    lease_namespace: str = ""
    lease_name: str = Field(default="speechkit-operator", min_length=1, max_length=253)
    #: A leader that has not renewed its Lease for this long is replaced.
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    #: How often the leader renews its Lease (well below the duration).
    lease_renew_seconds: float = Field(default=5.0, gt=0)

    # --- Polling --------------------------------------------------------------------------------
    #: Expected processing time per minute of audio per channel (the docs say about 10 s), until
    #: finished jobs of a model have taught the operator that model's pace.
    seconds_per_audio_minute: float = Field(default=10.0, ge=0)
    #: The first check never comes sooner than this after submission.
    first_check_min_seconds: float = Field(default=5.0, ge=0)
    #: Interval after the first check; it grows by ``poll_backoff_factor`` per check.
    poll_initial_interval_seconds: float = Field(default=5.0, gt=0)
    poll_backoff_factor: float = Field(default=1.5, ge=1.0)
    #: The longest interval between two checks.
    poll_max_interval_seconds: float = Field(default=300.0, gt=0)

    # --- Kubernetes API and kopf ---------------------------------------------------------------
    watch_server_timeout: int = Field(default=300, gt=0)
    watch_client_timeout: int = Field(default=330, gt=0)
    request_timeout: float = Field(default=60.0, gt=0)
    #: How long a Secret read stays cached, in seconds.
    secret_cache_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _backend_has_an_address(self) -> Settings:
        if self.backend == "self-hosted" and self.self_hosted_url is None:
            raise ValueError(
                "SPEECHKIT_OPERATOR_BACKEND=self-hosted needs SPEECHKIT_OPERATOR_SELF_HOSTED_URL"
            )
        return self

    @model_validator(mode="after")
    def _lease_renews_in_time(self) -> Settings:
        if self.lease_renew_seconds * 2 > self.lease_duration_seconds:
            raise ValueError(
                "SPEECHKIT_OPERATOR_LEASE_RENEW_SECONDS must be at most half of "
                "SPEECHKIT_OPERATOR_LEASE_DURATION_SECONDS"
            )
        return self

    @property
    def intent_settle_seconds(self) -> float:
        """How long a submission can take, retries included, before its answer is surely lost."""
        attempts = self.retry_attempts
        return self.http_timeout * attempts + self.retry_max_delay * max(0, attempts - 1) + 60.0

    @property
    def submit_base_url(self) -> str:
        """Where ``longRunningRecognize`` is posted, for the configured backend."""
        if self.backend == "self-hosted" and self.self_hosted_url is not None:
            return str(self.self_hosted_url).rstrip("/")
        return str(self.stt_url).rstrip("/")

    @property
    def v3_base_url(self) -> str:
        """Where the v3 recognition calls go, for the configured backend."""
        if self.backend == "self-hosted" and self.self_hosted_url is not None:
            return str(self.self_hosted_url).rstrip("/")
        return str(self.stt_v3_url).rstrip("/")

    @property
    def operations_base_url(self) -> str:
        """Where operations are looked at, for the configured backend."""
        if self.backend == "self-hosted" and self.self_hosted_url is not None:
            return str(self.self_hosted_url).rstrip("/")
        return str(self.operation_url).rstrip("/")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("storage_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(part).strip().lower().rstrip("/") for part in value if str(part).strip())
        return value

    @field_validator("storage_endpoints")
    @classmethod
    def _check_endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            found = _ENDPOINT_PATTERN.fullmatch(pattern)
            port = found.group(4) if found else None
            if not found or (port not in (None, "*") and not 0 < int(port) < 65536):
                raise ValueError(
                    f"{pattern!r} is not an endpoint pattern: write scheme://host or scheme://host:port "
                    "(scheme http or https; * is a wildcard in the host, and may be the port)"
                )
        return value


#: ``scheme://host[:port]`` with ``*`` wildcards in the host and ``*`` as a port, or an IPv6 literal.
_ENDPOINT_PATTERN = re.compile(
    r"https?://([a-z0-9*]([a-z0-9*.-]*[a-z0-9*])?|\[[0-9a-f:.]+\])(:(\*|[0-9]{1,5}))?"
)
