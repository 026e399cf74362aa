"""Where transcripts go in S3."""

from __future__ import annotations


def output_base_key(source_key: str, prefix: str) -> str:
    """The key every output of ``source_key`` starts with: ``prefix`` followed by the full source key.

    The source key keeps its extension, so ``talk.wav`` and ``talk.mp3`` get ``out/talk.wav.json`` and
    ``out/talk.mp3.json`` and never overwrite each other. The prefix is used exactly as given: a prefix
    that does not end in ``/`` is glued to the key (``out`` + ``talk.wav`` gives ``outtalk.wav``), which
    lets users write both ``transcripts/`` folders and ``transcript-`` name prefixes. An empty prefix puts
    outputs next to the source (``talk.wav.json``).
    """
    return f"{prefix}{source_key}"


def s3_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key``."""
    return f"s3://{bucket}/{key}"


#: S3 (and Yandex Object Storage) refuse keys longer than this many bytes of UTF-8.
MAX_KEY_BYTES = 1024


#: The part of a per-channel or per-speaker subtitle key between the base key and the format:
#: ``.channel-2.srt``, ``.speaker-1.vtt`` (see :func:`~speechkit_operator.logic.rendering.render_outputs`).
PER_TAG_INFIX = r"(?:channel|speaker)-[A-Za-z0-9_-]+\."


def longest_output_key_bytes(source_key: str, prefix: str, *, channels: int, speakers: bool = False) -> int:
    """The UTF-8 length of the longest key a job can write: ``.json`` for mono audio, a per-channel
    subtitle such as ``.channel-8.srt`` for multichannel audio, ``.speaker-2.srt`` with speaker labels
    (the CRD counts characters, S3 bytes)."""
    base = len(output_base_key(source_key, prefix).encode())
    longest = f".channel-{channels}.srt" if channels > 1 else ".json"
    return base + len(".speaker-2.srt" if speakers else longest)
