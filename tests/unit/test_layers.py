"""The package's layering (pyproject.toml [tool.importlinter]) and the Reason enum's generated members."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.models.job import Reason, SecretRole

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept() -> None:
    """lint-imports takes a fraction of a second: a layering violation fails the unit tier too."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (the dev extra)")
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_grpc_code_has_its_reason() -> None:
    for code in GrpcCode:
        assert Reason(code.reason).value == code.reason
        if code is not GrpcCode.OK:  # OK is falsy: an "error" with code 0 is Unknown, as before
            assert Reason.from_grpc(code.value) == code.reason
    assert Reason.from_grpc(99) is Reason.UNKNOWN
    assert Reason.from_grpc(None) is Reason.UNKNOWN


def test_secret_reasons_are_named_after_the_secret() -> None:
    assert Reason.secret_not_found(SecretRole.CREDENTIALS) is Reason.CREDENTIALS_SECRET_NOT_FOUND
    assert Reason.secret_unreadable(SecretRole.STORAGE) is Reason.STORAGE_SECRET_UNREADABLE
    assert {Reason.secret_not_found(role) for role in SecretRole} <= set(Reason)


def test_reasons_are_their_strings_on_the_wire() -> None:
    assert str(Reason.SUBMITTED) == "Submitted"
    assert f"{Reason.RESULT_EXPIRED}" == "ResultExpired"
    assert len({reason.value for reason in Reason}) == len(Reason)
