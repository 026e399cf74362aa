"""Word error rate and speed of a self-hosted recognition engine on the shared corpus.

    python bench/engine_quality.py                     # the default engine, its default settings
    python bench/engine_quality.py --repeat 3          # least CPU time of 3 runs per file (busy machines)
    python bench/engine_quality.py --set maxhmmpf=30000 --set fwdflat=yes   # PocketSphinx experiments

Every file in ``../shared/audio/manifest.json`` is decoded the way the service decodes it (headerless
PCM with its declared encoding and rate) and every channel is recognised in this one process. For each
it prints the word error rate against the manifest's text (word-level Levenshtein distance over
lowercased words, divided by the number of reference words) and the real-time factor per core: CPU
seconds spent in ``recognize`` divided by the audio's seconds. The overall WER is over the five LibriVox
utterances (errors summed, divided by words summed); the overall RTF is over every file. It also
reports how long creating the engine's decoder took and how much resident memory it added.

``--set KEY=VALUE`` (PocketSphinx only) overrides a field of ``PocketsphinxSettings`` (``pad_seconds``,
``min_pause_seconds``, ``max_region_seconds``, ``vad_mode``) or else passes a decoder option such as
``beam``, ``wbeam``, ``maxhmmpf``, ``fwdflat``, ``bestpath``, ``lw`` or ``topn``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkit_operator.models.audio import AudioEncoding
from speechkit_operator.selfhosted.decoding import decode_audio
from speechkit_operator.selfhosted.engines import Engine, get_engine

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
UTTERANCES = (
    "librivox-0870.wav",
    "librivox-0880.wav",
    "librivox-0890.wav",
    "librivox-0920.wav",
    "librivox-0930.wav",
)
WER_TARGET = 0.30
RTF_TARGET = 0.25


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions turning ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def references(files: dict[str, Any], name: str) -> dict[str, str]:
    """Channel tag ("1", "2", ...) -> reference text, following ``same_as``."""
    entry = files[name]
    while "text" not in entry and "channel_text" not in entry and "same_as" in entry:
        entry = files[entry["same_as"]]
    if "channel_text" in entry:
        return {str(tag): str(text) for tag, text in entry["channel_text"].items()}
    return {"1": str(entry["text"])} if "text" in entry else {}


def rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _value(text: str) -> bool | int | float | str:
    lowered = text.lower()
    if lowered in ("yes", "true", "no", "false"):
        return lowered in ("yes", "true")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build_engine(name: str, overrides: list[str]) -> Engine:
    if not overrides:
        return get_engine(name)
    if name != "pocketsphinx":
        raise SystemExit("--set is only understood for the pocketsphinx engine")
    from speechkit_operator.selfhosted.engines.pocketsphinx_engine import (  # noqa: PLC0415
        PocketsphinxEngine,
        PocketsphinxSettings,
    )

    fields = {f.name for f in dataclasses.fields(PocketsphinxSettings)}
    settings = PocketsphinxSettings()
    options = dict(settings.decoder_options)
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, not {item!r}")
        if key in fields and key != "decoder_options":
            changes[key] = _value(raw)
        else:
            options[key.lstrip("-")] = _value(raw)
    return PocketsphinxEngine(dataclasses.replace(settings, decoder_options=options, **changes))


@dataclass
class Row:
    name: str
    channel: str
    seconds: float
    decode_cpu: float
    recognize_cpu: float
    errors: int | None
    reference_words: int
    hypothesis: str

    @property
    def wer(self) -> float | None:
        if self.errors is None or not self.reference_words:
            return None
        return self.errors / self.reference_words


def measure(engine: Engine, audio_dir: Path, language: str, repeat: int) -> list[Row]:
    files: dict[str, Any] = json.loads((audio_dir / "manifest.json").read_text())["files"]
    rows: list[Row] = []
    for name, entry in files.items():
        data = (audio_dir / name).read_bytes()
        headerless = entry.get("format") == "raw"
        started = time.process_time()
        decoded = decode_audio(
            data,
            encoding=AudioEncoding(entry["encoding"]) if headerless else None,
            sample_rate_hertz=int(entry["sampleRateHertz"]) if headerless else None,
            channel_count=int(entry.get("channels", 1)) if headerless else None,
        )
        decode_cpu = time.process_time() - started
        refs = references(files, name)
        for index, pcm in enumerate(decoded.channels, 1):
            tag = str(index)
            cpu = float("inf")
            hypothesis = ""
            for _ in range(repeat):
                started = time.process_time()
                utterances = engine.recognize(pcm, language)
                cpu = min(cpu, time.process_time() - started)
                hypothesis = " ".join(u.text for u in utterances)
            reference = words(refs[tag]) if tag in refs else None
            rows.append(
                Row(
                    name=name,
                    channel=tag,
                    seconds=decoded.duration_seconds,
                    decode_cpu=decode_cpu / decoded.channel_count,
                    recognize_cpu=cpu,
                    errors=None if reference is None else edit_distance(reference, words(hypothesis)),
                    reference_words=len(reference or []),
                    hypothesis=hypothesis,
                )
            )
    return rows


def print_report(rows: list[Row], creation_wall: float, creation_cpu: float, creation_rss: float) -> bool:
    header = (
        f"{'file':34} {'ch':>2} {'audio s':>7} {'decode s':>8} {'CPU s':>6} {'RTF':>6} {'WER':>6}  hypothesis"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        wer = "-" if row.wer is None else f"{row.wer:.1%}"
        rtf = row.recognize_cpu / row.seconds if row.seconds else 0.0
        print(
            f"{row.name:34} {row.channel:>2} {row.seconds:7.2f} {row.decode_cpu:8.3f} "
            f"{row.recognize_cpu:6.2f} {rtf:6.3f} {wer:>6}  {row.hypothesis}"
        )
    core = [row for row in rows if row.name in UTTERANCES]
    errors = sum(row.errors or 0 for row in core)
    total_words = sum(row.reference_words for row in core)
    overall_wer = errors / total_words if total_words else float("nan")
    cpu = sum(row.recognize_cpu for row in rows)
    audio = sum(row.seconds for row in rows)
    overall_rtf = cpu / audio if audio else float("nan")
    print()
    wer_ok = overall_wer <= WER_TARGET
    rtf_ok = overall_rtf <= RTF_TARGET
    print(
        f"WER on the {len(core)} LibriVox utterances: {overall_wer:.1%} ({errors}/{total_words} words)"
        f"   target <= {WER_TARGET:.0%}: {'met' if wer_ok else 'NOT MET'}"
    )
    print(
        f"RTF per core over all files: {overall_rtf:.3f} ({cpu:.2f} CPU s / {audio:.2f} audio s)"
        f"   target <= {RTF_TARGET}: {'met' if rtf_ok else 'NOT MET'}"
    )
    print(
        f"decoder creation: {creation_wall:.2f} s wall, {creation_cpu:.2f} s CPU, "
        f"+{creation_rss:.0f} MiB resident"
    )
    return wer_ok and rtf_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR)
    parser.add_argument("--engine", default="pocketsphinx")
    parser.add_argument("--language", default="en-US")
    parser.add_argument(
        "--repeat", type=int, default=1, help="recognise each channel N times, keep the least CPU"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not (args.audio_dir / "manifest.json").is_file():
        print(f"no manifest.json in {args.audio_dir}", file=sys.stderr)
        return 2

    before = rss_mib()
    engine = build_engine(args.engine, args.overrides)
    wall, cpu = time.perf_counter(), time.process_time()
    warm_up = getattr(engine, "warm_up", None)
    if callable(warm_up):
        warm_up()
    creation_wall, creation_cpu = time.perf_counter() - wall, time.process_time() - cpu
    creation_rss = rss_mib() - before
    settings = getattr(engine, "settings", None)
    print(f"engine: {engine.name}" + (f"  settings: {settings}" if settings is not None else ""))
    print()
    rows = measure(engine, args.audio_dir, args.language, max(args.repeat, 1))
    return 0 if print_report(rows, creation_wall, creation_cpu, creation_rss) else 1


if __name__ == "__main__":
    sys.exit(main())
