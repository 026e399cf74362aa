"""The ``speechkit-operator`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import kopf

from speechkit_operator import __version__
from speechkit_operator.clients.kube_preflight import PreflightError, preflight
from speechkit_operator.clients.leases import LeaderElector, LeaseLock, default_lease_namespace
from speechkit_operator.clients.speech.auth import load_ca_bundle
from speechkit_operator.config import Settings
from speechkit_operator.context import instance_identity
from speechkit_operator.envconfig import ConfigurationError, load_settings
from speechkit_operator.handlers import register
from speechkit_operator.health import standby_health
from speechkit_operator.logs import LOG_FORMATS, configure_logging
from speechkit_operator.models.batch import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_IN_FLIGHT
from speechkit_operator.selfhosted.app import run as run_service
from speechkit_operator.selfhosted.config import ServiceSettings
from speechkit_operator.stream_cli import StreamOptions, stream
from speechkit_operator.transcribe import DEFAULT_FORMATS, SEED_MAPPING, transcribe
from speechkit_operator.transcribe import Options as TranscribeOptions

#: Exit status for a usage or configuration error (as argparse's), and for a setup that cannot work.
EXIT_CONFIGURATION = 2
EXIT_SETUP = 1
#: The Lease was lost: another operator may act; this one stops at once (and is restarted).
EXIT_LEADERSHIP_LOST = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechkit-operator",
        description="Kubernetes operator that transcribes speech in S3 buckets with Yandex SpeechKit.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator (wraps `kopf run`)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="watch this namespace (repeatable; globs allowed). Default: SPEECHKIT_OPERATOR_NAMESPACES, "
        "else the whole cluster",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch the whole cluster")
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    run.add_argument(
        "--log-format", choices=LOG_FORMATS, default="plain", help="plain text, or one JSON object per line"
    )
    run.add_argument(
        "--skip-preflight",
        action="store_true",
        help="start without first checking the API server, the CRD and RBAC",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve kopf's liveness probe at http://0.0.0.0:PORT/healthz",
    )
    serve = commands.add_parser(
        "serve",
        help="run the self-hosted, SpeechKit-compatible recognition service",
        description="Serve the SpeechKit v2 async API (and v1 sync recognition) with an embedded engine. "
        "Settings come from SPEECHKIT_SERVE_* variables; see README.md.",
    )
    serve.add_argument("--host", default=None, help="address to listen on (SPEECHKIT_SERVE_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (SPEECHKIT_SERVE_PORT)")
    serve_verbosity = serve.add_mutually_exclusive_group()
    serve_verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    serve_verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    serve.add_argument(
        "--log-format", choices=LOG_FORMATS, default="plain", help="plain text, or one JSON object per line"
    )
    _transcribe_parser(commands)
    _stream_parser(commands)
    return parser


def _transcribe_epilog() -> str:
    width = max(len(seed) for seed, _ in SEED_MAPPING)
    rows = "\n".join(f"  {seed:<{width}}  {here}" for seed, here in SEED_MAPPING)
    return f"""\
The cron script's environment, side by side:
{rows}

Other environment variables: S3_ENDPOINT (the storage; default: SPEECHKIT_OPERATOR_STORAGE_ENDPOINT,
https://storage.yandexcloud.net), S3_REGION, SPEECHKIT_FOLDER_ID, SPEECHKIT_AUTHORIZED_KEY_FILE (a
service account's authorized key), and every SPEECHKIT_OPERATOR_* setting of the operator (quotas,
polling, SpeechKit URLs, SPEECHKIT_OPERATOR_BACKEND=self-hosted).

State: job objects, the pass's progress and a lock live in the output bucket under
<output prefix>.speechkit/ (--state-prefix): an interrupted run is resumed by running the same command
again, nothing is submitted twice (a submission whose answer was lost is submitted once more and counted
as uncertain, as in the operator), and a second run on the same state is refused while the first runs.
Each completed run starts a new pass: new objects are transcribed, transcribed ones skipped.

Not supported: rescanning in a loop (run it from cron or a Kubernetes CronJob, or use a
TranscriptionBatch with rescanInterval), Secrets or credentials other than the variables above, local
input without --bucket and --upload-prefix.

Exit status: 0 all transcribed or skipped, 1 some failed, 2 usage or configuration error, 3 the lock
was lost, 4 another run holds the lock, 130 interrupted (run again to resume)."""


def _transcribe_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "transcribe",
        help="transcribe a prefix, object or local files, in the foreground (replaces the cron script)",
        description="Transcribe every audio file under an S3 prefix (or one object, or local files) once, in "
        "the foreground, with the operator's quotas, outputs and resume, without Kubernetes.",
        epilog=_transcribe_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="s3://BUCKET/PREFIX/, s3://BUCKET/KEY (one object), or a local file or folder (uploaded "
        "first: needs --bucket and --upload-prefix). Default: s3://$S3_BUCKET/$S3_PREFIX",
    )
    where = command.add_argument_group("where")
    where.add_argument("--bucket", help="local input: the bucket to upload it to (required for local input)")
    where.add_argument(
        "--upload-prefix",
        metavar="PREFIX",
        help="local input: the prefix (a folder) to upload it under (required for local input)",
    )
    where.add_argument(
        "--local-output",
        type=Path,
        default=Path("transcripts"),
        metavar="DIR",
        help="local input: where the transcripts are copied (default: ./transcripts)",
    )
    where.add_argument("--output-bucket", help="the bucket of the transcripts (default: the source's)")
    where.add_argument(
        "--output-prefix",
        metavar="PREFIX",
        help="the transcripts' prefix, glued to the full source key (default: $S3_PREFIX_OUT/, else out/)",
    )
    where.add_argument(
        "--state-prefix",
        metavar="PREFIX",
        help="where the run's state lives in the output bucket (default: <output prefix>.speechkit/)",
    )
    what = command.add_argument_group("what")
    what.add_argument(
        "--formats",
        type=_list,
        default=",".join(DEFAULT_FORMATS),
        help="output formats, comma-separated (default: json,txt,srt,vtt)",
    )
    what.add_argument(
        "--language",
        help="language code, such as ru-RU or en-US, or auto (default: config.json's lang in the source "
        "prefix, as the cron script, else ru-RU)",
    )
    what.add_argument("--model", default="general", help="recognition model (default: general)")
    what.add_argument(
        "--api",
        choices=("v2", "v3"),
        default="v2",
        help="SpeechKit API (default: v2); v3 adds --text-normalization and --speaker-labeling",
    )
    what.add_argument(
        "--text-normalization",
        action="store_true",
        help="v3: normalise the text (numbers as digits); without it numbers come in words",
    )
    what.add_argument(
        "--speaker-labeling", action="store_true", help="v3, mono audio: label up to two speakers"
    )
    what.add_argument(
        "--include", action="append", default=[], metavar="GLOB", help="only keys matching (repeatable)"
    )
    what.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="never keys matching (repeatable)"
    )
    what.add_argument(
        "--extensions",
        type=_list,
        default=None,
        help="audio extensions, comma-separated (default: .wav,.ogg,.opus,.mp3)",
    )
    seed = command.add_argument_group("the cron script's files")
    seed.add_argument(
        "--seed-log",
        metavar="PREFIX",
        help="its marker prefix (default: $S3_PREFIX_LOG): its operations are adopted, not resubmitted",
    )
    seed.add_argument(
        "--seed-output", metavar="PREFIX", help="its results prefix (default: $S3_PREFIX_OUT, else out/)"
    )
    seed.add_argument("--no-seed", action="store_true", help="ignore S3_PREFIX_LOG and S3_PREFIX_OUT")
    run = command.add_argument_group("running")
    run.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="jobs unfinished at once (default: 1000)",
    )
    run.add_argument(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        help="tries per object for transient failures",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="try again the objects that failed in earlier runs (by default they stay failed: no 2nd charge)",
    )
    run.add_argument(
        "--force-unlock",
        action="store_true",
        help="take the lock over even if another run seems to hold it (only when that run is surely gone)",
    )
    run.add_argument(
        "--lock-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the lock lasts unless renewed (renewed every third of it; default: 60)",
    )
    output = command.add_argument_group("output")
    output.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="progress bars on a terminal (auto), else a line every --progress-interval seconds",
    )
    output.add_argument(
        "--progress-interval", type=float, default=10.0, metavar="SECONDS", help=argparse.SUPPRESS
    )
    verbosity = output.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="log steps (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors and the summary only")


_STREAM_EPILOG = """\
Input: 16-bit PCM WAV (mono at 8000, 16000 or 48000 Hz is sent as is; other WAVs are mixed down to mono
and, unless at 8000 or 16000 Hz, resampled to 16000 Hz), Ogg Opus (sent as is), or headerless 16-bit
little-endian PCM from a file or stdin with --encoding lpcm --sample-rate N. A session takes at most
5 minutes of audio and 10 MB: longer files are refused before anything is sent, and stdin is cut at the
limit.

Endpoint: the self-hosted service (`speechkit-operator serve`, SPEECHKIT_SERVE_GRPC_PORT) at
localhost:8089 in plaintext by default; SpeechKit is --endpoint stt.api.cloud.yandex.net:443 (port 443,
or SpeechKit's host, implies TLS; --tls and --insecure decide otherwise). SPEECHKIT_OPERATOR_CA_BUNDLE
names CA certificates to trust instead of the system's.

Credentials, as for `transcribe`: API_SECRET or SPEECHKIT_API_KEY (Api-Key), SPEECHKIT_IAM_TOKEN
(Bearer), or SPEECHKIT_AUTHORIZED_KEY_FILE (a service account's key, exchanged for an IAM token);
SPEECHKIT_FOLDER_ID (or --folder-id) goes into the config's folder_id. --api-key-env NAME reads the API
key from the variable NAME instead. Secrets are never printed.

Output: on a terminal, the partial result rewrites the current line and each final result gets a line
of its own; otherwise one line per final result (--partials: partial results too, as "partial: ...").

Exit status: 0 recognised to the end, 1 the call failed (the gRPC status and the service's message are
printed) or the stream stopped at a session limit, 2 usage error or input that cannot be streamed, 130
interrupted (Ctrl-C stops the audio; the results of what was sent are still printed)."""


def _stream_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "stream",
        help="recognise a file or stdin as a live stream (gRPC StreamingRecognize), with partial results",
        description="Stream audio to SpeechKit's v2 StreamingRecognize (or the self-hosted service) at "
        "real time, 400 ms of audio every 400 ms, and print the results as they come. See docs/stream.md.",
        epilog=_STREAM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "source", metavar="FILE|-", help="a WAV, Ogg Opus or headerless PCM file; - for stdin"
    )
    where = command.add_argument_group("service")
    where.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="the service (default: localhost:8089, the self-hosted service; SpeechKit: "
        "stt.api.cloud.yandex.net:443)",
    )
    security = where.add_mutually_exclusive_group()
    security.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const=True,
        default=None,
        help="use TLS (default for port 443)",
    )
    security.add_argument(
        "--insecure",
        "--plaintext",
        dest="tls",
        action="store_const",
        const=False,
        help="plaintext, no TLS (default for other ports)",
    )
    where.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="read the API key from the environment variable NAME (default: API_SECRET, SPEECHKIT_API_KEY, "
        "SPEECHKIT_IAM_TOKEN, SPEECHKIT_AUTHORIZED_KEY_FILE)",
    )
    where.add_argument("--folder-id", metavar="ID", help="config.folder_id (default: SPEECHKIT_FOLDER_ID)")
    recognition = command.add_argument_group("recognition")
    recognition.add_argument("--language", default="ru-RU", help="language code (default: ru-RU)")
    recognition.add_argument("--model", default="general", help="recognition model (default: general)")
    recognition.add_argument("--profanity-filter", action="store_true", help="mask profanity")
    recognition.add_argument(
        "--no-partial",
        dest="partial_results",
        action="store_false",
        help="ask for final results only (partial results are asked for by default)",
    )
    audio = command.add_argument_group("audio")
    audio.add_argument(
        "--encoding",
        choices=("lpcm", "oggopus"),
        help="headerless input: lpcm (16-bit little-endian PCM; needs --sample-rate). WAV and Ogg Opus need "
        "none (oggopus is accepted for Ogg Opus)",
    )
    audio.add_argument(
        "--sample-rate", type=int, metavar="HZ", help="headerless PCM's sample rate: 8000, 16000 or 48000"
    )
    audio.add_argument(
        "--fast", action="store_true", help="send the audio as fast as possible instead of at real time"
    )
    output = command.add_argument_group("output")
    output.add_argument(
        "--partials",
        action="store_true",
        help="when stdout is not a terminal, print partial results too, as lines starting with 'partial: '",
    )
    output.add_argument("--json", action="store_true", help="print each response as one JSON object per line")
    output.add_argument("-v", "--verbose", action="store_true", help="log steps to stderr")


def stream_command(args: argparse.Namespace) -> int:
    configure_logging(verbose=args.verbose, quiet=not args.verbose)
    options = StreamOptions(
        source=args.source,
        encoding=args.encoding,
        sample_rate=args.sample_rate,
        endpoint=args.endpoint,
        tls=args.tls,
        api_key_env=args.api_key_env,
        folder_id=args.folder_id,
        language=args.language,
        model=args.model,
        profanity_filter=args.profanity_filter,
        partial_results=args.partial_results,
        fast=args.fast,
        partials=args.partials,
        json=args.json,
        verbose=args.verbose,
    )
    return stream(options)


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def transcribe_command(args: argparse.Namespace) -> int:
    formats = args.formats if isinstance(args.formats, tuple) else _list(args.formats)
    options = TranscribeOptions(
        source=args.source,
        bucket=args.bucket,
        upload_prefix=args.upload_prefix,
        local_output=args.local_output,
        output_bucket=args.output_bucket,
        output_prefix=args.output_prefix,
        formats=formats,
        language=args.language,
        model=args.model,
        api=args.api,
        text_normalization=args.text_normalization,
        speaker_labeling=args.speaker_labeling,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        extensions=args.extensions or (),
        seed_log=args.seed_log,
        seed_output=args.seed_output,
        no_seed=args.no_seed,
        max_in_flight=args.max_in_flight,
        max_attempts=args.max_attempts,
        state_prefix=args.state_prefix,
        force_unlock=args.force_unlock,
        retry_failed=args.retry_failed,
        lock_seconds=args.lock_seconds,
        progress=args.progress,
        progress_interval=args.progress_interval,
        verbose=args.verbose,
        quiet=args.quiet,
    )
    return transcribe(options)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Settings)
        load_ca_bundle(settings.ca_bundle)
    except ConfigurationError as exc:
        _refuse("speechkit-operator", exc)
        return EXIT_CONFIGURATION
    except ValueError as exc:
        _refuse("speechkit-operator", ConfigurationError([str(exc)]))
        return EXIT_CONFIGURATION
    configure_logging(verbose=args.verbose, quiet=args.quiet, log_format=args.log_format)
    namespaces = [] if args.all_namespaces else (args.namespaces or settings.namespaces)
    lease_namespace = default_lease_namespace(settings.lease_namespace) if settings.leader_election else None
    if not args.skip_preflight:
        try:
            lease = (lease_namespace, settings.lease_name) if lease_namespace is not None else None
            state = None
            if settings.predictions_configmap:
                state = (default_lease_namespace(settings.lease_namespace), settings.predictions_configmap)
            preflight(namespaces, lease=lease, state=state)
        except PreflightError as exc:
            print(f"speechkit-operator: {exc}", file=sys.stderr)
            return EXIT_SETUP
    identity = instance_identity()
    elector = None
    if lease_namespace is not None:
        elector = _elect(settings, lease_namespace, identity, args.liveness_port)
        if elector is None:
            return 0  # stopped while waiting
    # The default registry carries kopf's login handlers (kubeconfig or in-cluster service account).
    registry = register(kopf.get_default_registry(), settings)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        kopf.run(
            registry=registry,
            memo=kopf.Memo(settings=settings, identity=identity, sole_actor=elector is not None),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:
            elector.stop_and_release()
    return 0


def _elect(
    settings: Settings, namespace: str, identity: str, liveness_port: int | None
) -> LeaderElector | None:
    """Wait for the Lease (answering liveness probes meanwhile), then keep renewing it. If it is
    lost, the process exits at once: another operator may act from then on."""

    def lost() -> None:
        logging.getLogger(__name__).critical("leadership lost: exiting so that only one operator acts")
        logging.shutdown()
        os._exit(EXIT_LEADERSHIP_LOST)

    lock = LeaseLock(
        namespace=namespace,
        name=settings.lease_name,
        identity=identity,
        duration_seconds=settings.lease_duration_seconds,
    )
    elector = LeaderElector(
        lock,
        renew_seconds=settings.lease_renew_seconds,
        renew_deadline_seconds=settings.lease_duration_seconds - settings.lease_renew_seconds,
        retry_seconds=min(2.0, settings.lease_renew_seconds),
        on_lost=lost,
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with standby_health(liveness_port):
            if not elector.acquire(stop=stop):
                return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    elector.start_renewing()
    return elector


def serve(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    try:
        settings = load_settings(ServiceSettings, **overrides)
    except ConfigurationError as exc:
        _refuse("speechkit-operator serve", exc)
        return EXIT_CONFIGURATION
    configure_logging(verbose=args.verbose, quiet=args.quiet, log_format=args.log_format)
    run_service(settings)
    return 0


def _refuse(command: str, error: ConfigurationError) -> None:
    print(f"{command}: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "transcribe":
        return transcribe_command(args)
    if args.command == "stream":
        return stream_command(args)
    return 2  # pragma: no cover - argparse enforces a command
