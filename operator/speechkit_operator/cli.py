"""The ``speechkit-operator`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

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
from speechkit_operator.selfhosted.app import run as run_service
from speechkit_operator.selfhosted.config import ServiceSettings

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
    return parser


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
    return 2  # pragma: no cover - argparse enforces a command
