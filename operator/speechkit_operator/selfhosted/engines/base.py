"""What a recognition engine is, and the registry the service picks one from.

An engine turns 16 kHz mono 16-bit PCM into utterances with word timings. The service decodes each
channel with :func:`speechkit_operator.selfhosted.decoding.decode_audio`, calls :meth:`Engine.recognize`
once per channel in a worker process, and builds SpeechKit-shaped results from the utterances.

Adding another engine
=====================

1. **Implement** the :class:`Engine` protocol in ``engines/<name>_engine.py``; no subclassing is
   needed. It has

   * ``name``: the registry name, e.g. ``"vosk"``;
   * ``languages``: the SpeechKit language codes it has a model for (``frozenset({"en-US"})``);
   * ``recognize(pcm, language_code)``: call :func:`check_language` first, so a language without a model
     raises :class:`UnsupportedLanguageError` (the service answers ``INVALID_ARGUMENT``) instead of
     being recognised with the wrong model. Then return the utterances in time order: each
     :class:`Utterance` holds lowercase words without punctuation with start/end times in seconds
     from the start of ``pcm``, taken from the engine's own segmentation, and its text is the words
     joined by spaces. Optionally ``display_text`` (punctuated and cased, for ``literature_text``)
     and, for ``auto``, the detected ``language_code``. Return ``[]`` for silence.

   An engine may also offer ``warm_up()`` (load the model; the worker calls it once at start) and
   ``model_name`` (shown by ``/readyz`` and ``/v1/languages``).

   Import the engine's library inside the module, not in this package's ``__init__``, and load models
   lazily on the first :meth:`~Engine.recognize` (or in a ``warm_up()`` method) and keep them: the
   service runs one engine instance per worker process and reuses it for every request. Models must be
   shipped with the package or the image, and checked before use (see ``whisper_models.py``): nothing
   is downloaded at run time unless the administrator names a model that has to be.

2. **Register** a factory under the engine's name, either here in :data:`_BUILTIN_FACTORIES` (with the
   import inside the factory, so that importing the registry does not import every engine library) or,
   from other code, with :func:`register_engine`. :func:`get_engine` builds the engine once per process.

3. **Test** it like ``tests/unit/test_pocketsphinx_engine.py``: real recognition of the shared corpus
   (``tests/support/audio.py``) asserting distinctive words of the reference rather than exact strings,
   word times that increase and lie within the audio, ``[]`` for silence, and
   :class:`UnsupportedLanguageError` for a language it lacks. Then run
   ``python bench/engine_quality.py --engine NAME`` for its word error rate and real-time factor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from speechkit_operator.models.recognition import Word

__all__ = [
    "ENGINE_SAMPLE_RATE",
    "Engine",
    "EngineFactory",
    "UnknownEngineError",
    "UnsupportedLanguageError",
    "Utterance",
    "available_engines",
    "check_language",
    "get_engine",
    "register_engine",
]

#: The rate of the PCM every engine takes.
ENGINE_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech between silences: its words, with times in seconds.

    ``text`` and the words are normalised (lowercase, no punctuation), which is what SpeechKit v2 answers
    by default. An engine that also produces punctuated, cased text (Whisper) gives it as
    ``display_text``, which the service answers with ``literature_text: true``; engines without it
    leave it None and the service falls back to ``text``. An engine that identifies the language (for
    the ``auto`` language) reports it as a SpeechKit language code in ``language_code``, with its
    probability.
    """

    text: str
    words: tuple[Word, ...] = ()
    display_text: str | None = None
    language_code: str | None = None
    language_probability: float | None = None

    @property
    def start(self) -> float:
        return self.words[0].start if self.words else 0.0

    @property
    def end(self) -> float:
        return self.words[-1].end if self.words else 0.0


@runtime_checkable
class Engine(Protocol):
    """A speech recogniser for 16 kHz mono int16 PCM. See the module docstring for the contract."""

    @property
    def name(self) -> str: ...

    @property
    def languages(self) -> frozenset[str]: ...

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> list[Utterance]: ...


class UnsupportedLanguageError(ValueError):
    """The engine has no model for the requested language; never recognise with another one."""

    def __init__(self, language_code: str, supported: frozenset[str], engine: str | None = None) -> None:
        self.language_code = language_code
        self.supported = supported
        self.engine = engine
        which = f"the {engine} engine" if engine else "this engine"
        listed = ", ".join(sorted(supported)) or "none"
        super().__init__(f"language {language_code!r} is not supported by {which} (supported: {listed})")


def check_language(engine: Engine, language_code: str) -> str:
    """The engine's spelling of ``language_code`` (tags compare case-insensitively, as in BCP 47).

    Raises :class:`UnsupportedLanguageError` when the engine has no model for it.
    """
    wanted = language_code.strip().lower()
    for code in engine.languages:
        if code.lower() == wanted:
            return code
    raise UnsupportedLanguageError(language_code, engine.languages, engine.name)


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------

EngineFactory = Callable[[], Engine]


class UnknownEngineError(KeyError):
    """No engine is registered under the requested name."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"no recognition engine named {self.name!r}; available: {', '.join(self.known) or 'none'}"


def _pocketsphinx() -> Engine:
    # Imported here so that the registry (and the service's parent process) does not load PocketSphinx.
    from speechkit_operator.selfhosted.engines.pocketsphinx_engine import PocketsphinxEngine  # noqa: PLC0415

    return PocketsphinxEngine()


def _whisper() -> Engine:
    # faster-whisper is imported when the engine loads its model, not here. The model and its options come
    # from the SPEECHKIT_SERVE_WHISPER_* variables, as in the service; without the service's streaming
    # model (a second model loaded for nothing here: the service builds its workers' engines itself).
    from speechkit_operator.selfhosted.config import ServiceSettings  # noqa: PLC0415
    from speechkit_operator.selfhosted.engines.whisper_engine import (  # noqa: PLC0415
        WhisperEngine,
        options_from_settings,
    )

    return WhisperEngine(options_from_settings(ServiceSettings(grpc_port=0)))


_BUILTIN_FACTORIES: dict[str, EngineFactory] = {"pocketsphinx": _pocketsphinx, "whisper": _whisper}
_factories: dict[str, EngineFactory] = dict(_BUILTIN_FACTORIES)
_instances: dict[str, Engine] = {}
_lock = threading.Lock()


def register_engine(name: str, factory: EngineFactory, *, replace: bool = False) -> None:
    """Make ``get_engine(name)`` build its engine with ``factory`` (called at most once per process)."""
    with _lock:
        if name in _factories and not replace:
            raise ValueError(f"an engine named {name!r} is already registered")
        _factories[name] = factory
        _instances.pop(name, None)


def available_engines() -> tuple[str, ...]:
    with _lock:
        return tuple(sorted(_factories))


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``, built on the first call in this process and reused after."""
    with _lock:
        engine = _instances.get(name)
        if engine is None:
            factory = _factories.get(name)
            if factory is None:
                raise UnknownEngineError(name, tuple(sorted(_factories)))
            engine = _instances[name] = factory()
        return engine
