"""Which objects of a TranscriptionBatch's source become TranscriptionJobs, what the children are
called, and how the files of the cron script the batch replaces (the "seed") are read.

Globs
-----
``source.include`` and ``source.exclude`` are globs matched against the key *relative to the source
prefix* (:func:`relative_key`: ``calls/2024/a.wav`` under the prefix ``calls/`` is ``2024/a.wav``);
their syntax and how they match are :mod:`speechkit_operator.models.glob`'s.

Seed files
----------
The seed script keeps, for an input key ``input/a.wav`` (``S3_PREFIX=input``), a marker
``log/a.wav.json`` (``S3_PREFIX_LOG`` + the key after the input prefix + ``.json``: its
``config['s3_prefix_log'] + key[len(config['s3_prefix']):] + ".json"``) holding the operation's
JSON (``{"id": "e03...", "done": false, ...}``; ``{"done": "true", "id": "..."}`` once it wrote the
result ``out/a.wav.json``, ``S3_PREFIX_OUT`` + the marker's key after ``S3_PREFIX_LOG``); an optional
``config.json`` in the input prefix sets the language: ``{"lang": "ru-RU"}``. The script glues the
prefixes to the keys as they are, and so do :func:`seed_marker_key` and :func:`seed_result_key`.
The model refuses seed prefixes whose trailing slash disagrees with the source prefix's
(``input/`` with ``log`` would look for ``loga.wav.json``): see
:func:`~speechkit_operator.models.batch.seed_slash_problem`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from speechkit_operator.contracts.operation import OPERATION_ID_PATTERN
from speechkit_operator.models.glob import SplitKey, compile_glob
from speechkit_operator.models.job import (
    DOT_SEGMENT_PATTERN,
    KEY_PATTERN,
    LANGUAGE_PATTERN,
)

if TYPE_CHECKING:
    from speechkit_operator.models.batch import BatchSourceSpec

#: The name of the language file in the source prefix, as the seed script reads it.
SEED_CONFIG_NAME = "config.json"
#: The largest marker or config.json accepted: the seed writes about 200 bytes.
MAX_SEED_FILE_BYTES = 4096
#: Characters of the hash at the end of a child's name (lowercase base32: 5 bits each).
NAME_HASH_LENGTH = 10
#: The longest Kubernetes name that is also a DNS-1123 label.
MAX_NAME_LENGTH = 63
#: The readable part of a child's name when the key's basename has no ASCII letter or digit.
FALLBACK_STEM = "audio"
_MAX_KEY_LENGTH = 1024


# --------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------


def relative_key(key: str, prefix: str) -> str:
    """``key`` without ``prefix``; also without the ``/`` that follows a prefix written without a
    trailing slash (``calls`` + ``calls/a.wav`` gives ``a.wav``, like ``calls/`` does)."""
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not under the prefix {prefix!r}")
    rest = key[len(prefix) :]
    if prefix and not prefix.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    return rest


def seed_config_key(source_prefix: str) -> str:
    """Where the seed script reads ``config.json``: ``<S3_PREFIX>/config.json``, without doubling a
    slash the prefix already ends with (nor leading one for the empty prefix)."""
    if not source_prefix or source_prefix.endswith("/"):
        return f"{source_prefix}{SEED_CONFIG_NAME}"
    return f"{source_prefix}/{SEED_CONFIG_NAME}"


def _has_extension(key: str, extensions: Sequence[str]) -> bool:
    lowered = key.lower()
    return any(lowered.endswith(extension.lower()) for extension in extensions)


def selected(key: str, source: BatchSourceSpec) -> bool:
    """Whether the batch transcribes ``key``: under the prefix (a plain string prefix, as S3 lists
    it), not a "folder" (ending in ``/``), not the prefix's ``config.json``, not under the seed's
    marker or result prefixes, ending in one of the extensions (ignoring case), matching an include
    glob when there are any and no exclude glob.

    A selected key may still be unusable as a TranscriptionJob's source (see :func:`key_problem`).
    """
    if not key.startswith(source.prefix) or key.endswith("/"):
        return False
    if key == seed_config_key(source.prefix):
        return False
    if any(seed and key.startswith(seed) for seed in (source.seed_log, source.effective_seed_output)):
        return False
    if not _has_extension(key, source.extensions):
        return False
    if not source.include and not source.exclude:
        return True
    relative = SplitKey(relative_key(key, source.prefix))
    if source.include and not any(compile_glob(glob).matches_split(relative) for glob in source.include):
        return False
    return not any(compile_glob(glob).matches_split(relative) for glob in source.exclude)


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a TranscriptionJob's ``source.key`` (then the batch skips it), or None."""
    if len(key) > _MAX_KEY_LENGTH:
        return f"the key is {len(key)} characters long, more than the {_MAX_KEY_LENGTH} a job accepts"
    if re.fullmatch(KEY_PATTERN, key) is None:
        return "the key starts with / or holds control characters"
    if re.search(DOT_SEGMENT_PATTERN, key):
        return "the key has . or .. path segments, which HTTP clients resolve to another object"
    return None


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def child_name(bucket: str, key: str, output_bucket: str, output_prefix: str) -> str:
    """The name of the TranscriptionJob for ``key``: ``<stem>-<hash>``, a DNS-1123 label.

    The stem is the key's basename without its extension, lowercased, each run of characters other
    than ``a-z0-9`` made a ``-``, trimmed of ``-`` and cut to fit (``Call 42.WAV`` gives ``call-42``);
    ``audio`` when nothing is left (a Cyrillic name). The hash is the first 10 characters of the
    lowercase base32 SHA-256 of the four arguments joined with NUL: the same object written to the
    same place always gets the same name, two keys differing only in case or folder get different
    ones.
    """
    joined = "\x00".join((bucket, key, output_bucket, output_prefix))
    digest = hashlib.sha256(joined.encode("utf-8", "surrogatepass")).digest()
    tag = base64.b32encode(digest).decode("ascii").lower()[:NAME_HASH_LENGTH]
    basename = posixpath.basename(key)
    stem = posixpath.splitext(basename)[0] or basename
    stem = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    stem = stem[: MAX_NAME_LENGTH - 1 - NAME_HASH_LENGTH].rstrip("-") or FALLBACK_STEM
    return f"{stem}-{tag}"


# --------------------------------------------------------------------------------------------------
# The seed script's files
# --------------------------------------------------------------------------------------------------


def _seed_key(key: str, source_prefix: str, seed_prefix: str) -> str:
    if not key.startswith(source_prefix):
        raise ValueError(f"key {key!r} is not under the source prefix {source_prefix!r}")
    return f"{seed_prefix}{key[len(source_prefix) :]}.json"


def seed_marker_key(key: str, source_prefix: str, seed_log: str) -> str:
    """The seed's marker for ``key``: ``seed_log`` + the key after ``source_prefix`` + ``.json``
    (``input/a.wav`` under ``input`` with the log prefix ``log`` gives ``log/a.wav.json``)."""
    return _seed_key(key, source_prefix, seed_log)


def seed_result_key(key: str, source_prefix: str, seed_output: str) -> str:
    """The seed's JSON result for ``key``: ``seed_output`` + the key after ``source_prefix`` +
    ``.json`` (``out/a.wav.json``; its text files are ``out/a.wav.tag1.txt`` and ``.tag2.txt``)."""
    return _seed_key(key, source_prefix, seed_output)


@dataclass(frozen=True)
class SeedMarker:
    """What the seed's marker says: the SpeechKit operation it started, and whether it wrote the
    result (``done``)."""

    operation_id: str
    done: bool


class SeedMarkerWithoutOperation(ValueError):
    """A marker with no operation id: the seed script writes ``{"Status": "None"}`` when SpeechKit
    answered its submission without one, so nothing runs for the object (it may be transcribed)."""


def _load_object(data: bytes, what: str, example: str) -> dict[str, Any]:
    """A small JSON object from untrusted bytes; the seed's single-quoted form (``{'lang':
    'ru-RU'}``) is read too when the text has no double quote and no backslash, by swapping the
    quotes (nothing is evaluated)."""
    if len(data) > MAX_SEED_FILE_BYTES:
        raise ValueError(
            f"{what} is {len(data)} bytes, more than the {MAX_SEED_FILE_BYTES} accepted; "
            f"write it as {example}"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text; write it as {example}") from None
    value: Any = None
    for candidate in (text, _swapped_quotes(text)):
        if candidate is None:
            continue
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        break
    else:
        raise ValueError(f"{what} is not a JSON object; write it as {example}")
    if isinstance(value, dict):
        return value
    raise ValueError(f"{what} is a JSON {type(value).__name__}, not an object; write it as {example}")


def _swapped_quotes(text: str) -> str | None:
    if "'" not in text or '"' in text or "\\" in text:
        return None
    return text.replace("'", '"')


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def parse_seed_marker(data: bytes) -> SeedMarker:
    """Read a seed marker; ValueError, saying what is wrong, for anything but an object with an
    operation ``id`` and a ``done`` that is a boolean or the string ``"true"``/``"false"`` (any
    case). A marker without an id (absent, null or empty) raises :class:`SeedMarkerWithoutOperation`,
    a ValueError.

    The id must match :data:`~speechkit_operator.contracts.operation.OPERATION_ID_PATTERN`, the one pattern
    the scheduler takes an adopted operation id by (lowercase ASCII letters and digits, at most 64,
    as SpeechKit writes them): an id the scheduler would refuse is refused here, so the object is
    skipped (``SeedMarkerInvalid``) rather than given a child that cannot adopt it."""
    marker = _load_object(data, "the seed marker", '{"id": "<operation id>", "done": false}')
    operation_id = marker.get("id")
    if operation_id is None or operation_id == "":
        raise SeedMarkerWithoutOperation(
            "the seed marker has no operation id (the seed script writes such a marker, "
            '{"Status": "None"}, when SpeechKit answered a submission without one)'
        )
    if not isinstance(operation_id, str) or re.fullmatch(OPERATION_ID_PATTERN, operation_id) is None:
        raise ValueError(
            f"the seed marker's id {_shown(operation_id)} is not a SpeechKit operation id "
            "(1 to 64 lowercase ASCII letters and digits)"
        )
    done = marker.get("done")
    if isinstance(done, str) and done.strip().lower() in ("true", "false"):
        done = done.strip().lower() == "true"
    if isinstance(done, bool):
        return SeedMarker(operation_id=operation_id, done=done)
    raise ValueError(f"the seed marker's done is {_shown(done)}, not true or false (a boolean or a string)")


def parse_seed_config(data: bytes) -> str:
    """The language code of a seed ``config.json`` (``{"lang": "ru-RU"}``, or the single-quoted
    form the seed's documentation shows); other keys are ignored, as the seed ignores them.
    ValueError with what to write instead when it is malformed."""
    example = '{"lang": "ru-RU"}'
    config = _load_object(data, SEED_CONFIG_NAME, example)
    if "lang" not in config:
        raise ValueError(f"{SEED_CONFIG_NAME} has no lang; write it as {example}")
    language = config["lang"]
    if not isinstance(language, str) or re.fullmatch(LANGUAGE_PATTERN, language) is None:
        raise ValueError(
            f"{SEED_CONFIG_NAME}: lang {_shown(language)} is not a language code such as ru-RU, "
            "en-US or kk-KZ, nor auto"
        )
    return language
