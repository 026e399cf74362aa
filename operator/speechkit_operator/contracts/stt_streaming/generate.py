"""Regenerate the stubs of ``stt_service.proto``.

``python -m speechkit_operator.contracts.stt_streaming.generate [--out DIR]``

Runs ``grpc_tools.protoc`` (grpcio-tools) with the plugins of mypy-protobuf, both pinned in the test extra,
and writes ``stt_service_pb2.py``, ``stt_service_pb2_grpc.py`` and their ``.pyi`` stubs beside the proto
(or under ``--out DIR``, in the same package folders). The stubs are committed; a unit test regenerates
them into a temporary folder and fails when they differ (a changed proto, or other tool versions).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

#: The folder ``speechkit_operator`` lives in: the proto's import root, so the generated modules import
#: each other as ``speechkit_operator.contracts.stt_streaming.…``.
SOURCE_ROOT: Final = Path(__file__).resolve().parents[3]
PROTO: Final = Path(__file__).resolve().with_name("stt_service.proto")
#: The files the generator writes, relative to its output folder.
GENERATED: Final = tuple(
    f"speechkit_operator/contracts/stt_streaming/stt_service_{suffix}"
    for suffix in ("pb2.py", "pb2.pyi", "pb2_grpc.py", "pb2_grpc.pyi")
)


class GenerationError(Exception):
    """protoc or a plugin is missing, or protoc failed."""


def _plugin(name: str) -> str:
    """The path of a protoc plugin: beside this interpreter (a virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise GenerationError(f"{name} not found: install the test extra (mypy-protobuf)")
    return found


def generate(out_dir: Path = SOURCE_ROOT) -> list[Path]:
    """Write the stubs under ``out_dir`` (package folders included); answer the files written."""
    try:
        import grpc_tools  # noqa: PLC0415 - the generator's own dependency, from the test extra
        from grpc_tools import protoc  # noqa: PLC0415
    except ImportError as exc:
        raise GenerationError("grpcio-tools is not installed: install the test extra") from exc
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    package_dir = out_dir / "speechkit_operator" / "contracts" / "stt_streaming"
    package_dir.mkdir(parents=True, exist_ok=True)
    proto = PROTO.relative_to(SOURCE_ROOT).as_posix()
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={SOURCE_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        proto,
    ]
    status = protoc.main(arguments)
    if status != 0:
        raise GenerationError(f"protoc failed with status {status} on {proto}")
    return [out_dir / name for name in GENERATED]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT, help="output root (default: the sources)")
    args = parser.parse_args(argv)
    try:
        written = generate(args.out)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
