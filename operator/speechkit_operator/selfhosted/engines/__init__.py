"""Recognition engines for the self-hosted service; see :mod:`.base` for the contract and how to add one.

Importing this package does not import any engine library: :func:`get_engine` loads an engine when it is
first asked for.
"""

from speechkit_operator.selfhosted.engines.base import (
    ENGINE_SAMPLE_RATE,
    Engine,
    EngineFactory,
    UnknownEngineError,
    UnsupportedLanguageError,
    Utterance,
    available_engines,
    check_language,
    get_engine,
    register_engine,
)

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
