"""The ``speechkit-operator`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import kopf

from speechkit_operator import __version__
from speechkit_operator.clients.kube_preflight import PreflightError, preflight
from speechkit_operator.config import Settings
from speechkit_operator.envconfig import ConfigurationError, load_settings
from speechkit_operator.handlers import register
from speechkit_operator.logs import LOG_FORMATS, configure_logging
from speechkit_operator.selfhosted.app import run as run_service
from speechkit_operator.selfhosted.config import ServiceSettings

#: Exit status for a usage or configuration error (as argparse's), and for a setup that cannot work.
EXIT_CONFIGURATION = 2
EXIT_SETUP = 1


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
    except ConfigurationError as exc:
        _refuse("speechkit-operator", exc)
        return EXIT_CONFIGURATION
    configure_logging(verbose=args.verbose, quiet=args.quiet, log_format=args.log_format)
    namespaces = [] if args.all_namespaces else (args.namespaces or settings.namespaces)
    if not args.skip_preflight:
        try:
            preflight(namespaces)
        except PreflightError as exc:
            print(f"speechkit-operator: {exc}", file=sys.stderr)
            return EXIT_SETUP
    # The default registry carries kopf's login handlers (kubeconfig or in-cluster service account).
    registry = register(kopf.get_default_registry(), settings)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        registry=registry,
        memo=kopf.Memo(settings=settings),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0


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
