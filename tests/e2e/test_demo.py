"""The README's first command, driven non-interactively: the whole product on real components.

This is also the operator end to end with ``backend: self-hosted``: a real kube-apiserver and
MinIO, the recognition service with the Whisper engine (English and Russian samples), and the operator as
a subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.components import REPO_ROOT, Binaries, KubeCluster
from devstack.demo import SAMPLES


@pytest.fixture(scope="module")
def plain_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files, as a clone has them, in a folder with no ``shared/`` beside it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    clone = tmp_path_factory.mktemp("plain") / "speechkit-operator"
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    assert not (clone.parent / "shared").exists()
    return clone


def run_demo(clone: Path, *flags: str, **env: str) -> str:
    """Run the demo of ``clone`` to its end; its output, after checking that it exited with 0."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SPEECHKIT_OPERATOR_")}
    # The clone's own package, not the one installed from this working tree.
    environ["PYTHONPATH"] = os.pathsep.join([str(clone / "operator"), str(clone)])
    result = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--exit-when-done", "--timeout", "300", *flags],
        cwd=clone,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_demo_runs_from_a_plain_clone_and_shows_every_transcript(
    e2e_binaries: Binaries, plain_clone: Path
) -> None:
    del e2e_binaries  # the demo finds the same binaries; the fixture fails or skips when absent
    output = run_demo(plain_clone)
    assert "every job Succeeded" in output

    # The live table showed every job reach Succeeded, with its audio duration.
    for sample in SAMPLES:
        for phase in ("Running", "Succeeded"):
            row = rf"^{sample.job}\s+{phase}\s+{sample.language}\s+[\d.]+"
            assert re.search(row, output, re.MULTILINE), (sample.job, phase)
        assert f"--- {sample.job}: Succeeded ---" in output

    # Transcripts are printed with their outputs; the engine is real, so check key words only.
    sections = dict(re.findall(r"^--- ([\w-]+): Succeeded ---\n(.*?)(?=^--- |\Z)", output, re.M | re.S))
    assert {"dashwood", "amiable", "respectable"} <= set(sections["all-five-sentences"].split())
    stereo = sections["stereo-interview"]
    assert re.search(r"\[channel 1\] .*young man", stereo)
    assert re.search(r"\[channel 2\] .*amiable", stereo)
    assert "srt:1" in stereo and "vtt:2" in stereo
    assert "leisure" in sections["short-mp3"].split()
    # Russian, recognised by the Whisper engine the demo installs.
    russian = sections["russian-greeting"]
    assert {"спасибо", "позвонили", "компанию"} <= set(russian.split()), russian
    for sample in SAMPLES:
        assert f"s3://recordings/transcripts/incoming/{sample.file}.json" in output


def test_demo_runs_against_the_current_kubectl_context(kube_cluster: KubeCluster, plain_clone: Path) -> None:
    output = run_demo(plain_clone, "--current-context", KUBECONFIG=str(kube_cluster.kubeconfig))
    assert "using the current kubectl context 'e2e'" in output
    assert "starting etcd" not in output  # no cluster of its own
    assert "every job Succeeded" in output
    # It cleans up after itself: the demo namespace is on its way out.
    namespace = kube_cluster.kubectl("get", "namespace", "speechkit-demo", "-o", "json", check=False)
    assert namespace.returncode != 0 or '"Terminating"' in namespace.stdout
