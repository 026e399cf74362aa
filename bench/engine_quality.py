"""Word error rate, speed, load time and memory of the self-hosted recognition engines.

    python bench/engine_quality.py                                     # pocketsphinx, LibriVox (as before)
    python bench/engine_quality.py --engine whisper --model base --set all
    python bench/engine_quality.py --all --set all                     # every engine and model x every set
    python bench/engine_quality.py --repeat 3                          # least CPU of 3 runs per file
    python bench/engine_quality.py --option maxhmmpf=30000 --option fwdflat=yes   # PocketSphinx experiments
    python bench/engine_quality.py --engine whisper --model base --set heldout-ru \\
        --option beam_size=1 --option vad_filter=no --language auto   # Whisper settings experiments

**Sets** (``--set``, repeatable; ``all`` is both):

* ``librivox``: every file of ``../shared/audio/manifest.json`` (English), decoded the way the service
  decodes it (headerless PCM with its declared encoding and rate), every channel recognised. The set's
  WER is over the five LibriVox utterances; its RTF over every file.
* ``heldout-ru``: the held-out Russian sentences of ``bench/heldout/ru/sentences.json``, synthesised
  with Festival + festvox-ru into ``~/.cache/speechkit-operator/heldout/ru`` by
  ``bench/heldout/synthesize.py`` (on first use; needs ``apt-get install festival festvox-ru``). No
  setting was tuned on them; the WER is over all of them. ``--sentences FILE.json`` scores other
  sentences in the same layout instead (e.g. ones the engine's authors have not seen).

**Engines** (``--engine``, repeatable, or ``--all`` for every registered one): the names in
``speechkit_operator.selfhosted.engines`` (``pocketsphinx``; ``whisper`` once its extra is installed),
each with its models (``--model``; for ``whisper``, ``tiny.en`` and ``base``, chosen through
``SPEECHKIT_SERVE_WHISPER_MODEL``). A name that is not registered is skipped with a message. A set in a
language the engine lacks (``ru-RU`` for pocketsphinx and tiny.en) is skipped with a message.

**Measurements.** Each engine/model runs in its own worker process, as in the service, single threaded
(``OMP_NUM_THREADS=1``), which recognises every set in turn and reports:

* WER: word-level Levenshtein distance over normalised words (:func:`words`), errors summed over the set
  divided by its reference words. Normalisation: lower case, ``ёлка`` as ``елка``, punctuation dropped
  (words are runs of Latin or Cyrillic letters, digits and apostrophes, so hyphens split words);
  English written abbreviations ``mr``/``mrs``/``dr``/``st`` are read as ``mister``/``missus``/
  ``doctor``/``saint``; a number written in digits is read as the service reads it with
  ``rawResults`` (:mod:`speechkit_operator.selfhosted.numbers`: in Russian its nominative cardinal,
  ``47 812`` as "сорок семь тысяч восемьсот двенадцать", an ordinal ending after a hyphen dropped). The
  references spell numbers in words in the case the sentence needs, so a hypothesis "до 6 часов" for
  "до шести часов" counts one error.
* RTF per core: CPU seconds of the worker process in ``recognize`` (all its threads) divided by the
  audio's seconds; also the wall-clock RTF (equal to it when the engine is single threaded).
* load: wall and CPU seconds to build the engine and load its model (``warm_up()``; an engine without
  one recognises one second of silence, which then counts as load), and the resident memory it added.
* peak RSS: the worker's high-water mark of resident memory (``VmHWM``) after all its sets.

``--option KEY=VALUE`` (``--set KEY=VALUE`` is still understood) overrides, for pocketsphinx, a field of
``PocketsphinxSettings`` (``pad_seconds``, ``min_pause_seconds``, ``max_region_seconds``, ``vad_mode``)
or else a decoder option (``beam``, ``wbeam``, ``maxhmmpf``, ``fwdflat``, ``bestpath``, ``lw``, ``topn``);
for an engine with an ``options`` dataclass (``whisper``: ``beam_size``, ``vad_filter``,
``condition_on_previous_text``, ``cpu_threads``, ``compute_type``), a field of it. ``--env NAME=VALUE``
sets an environment variable of the worker (``SPEECHKIT_SERVE_WHISPER_*``, which the engine reads).

The exit status is 0 when every measured engine/set met its targets (:data:`TARGETS`), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.selfhosted.decoding import decode_audio
from speechkit_operator.selfhosted.engines import (
    ENGINE_SAMPLE_RATE,
    Engine,
    UnknownEngineError,
    UnsupportedLanguageError,
    available_engines,
    check_language,
    get_engine,
)
from speechkit_operator.selfhosted.numbers import spell_numbers

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_AUDIO_DIR = BENCH_DIR.parents[1] / "shared" / "audio"
UTTERANCES = (
    "librivox-0870.wav",
    "librivox-0880.wav",
    "librivox-0890.wav",
    "librivox-0920.wav",
    "librivox-0930.wav",
)
SETS = ("librivox", "heldout-ru")
SET_LANGUAGE = {"librivox": "en-US", "heldout-ru": "ru-RU"}

#: The models of each engine that ``--all`` measures; ``None`` is the engine's only model.
MODELS: dict[str, tuple[str | None, ...]] = {
    "pocketsphinx": (None,),
    "whisper": ("tiny.en", "base"),
}
#: How the ``whisper`` engine is told which model to load.
WHISPER_MODEL_ENV = "SPEECHKIT_SERVE_WHISPER_MODEL"


@dataclass(frozen=True)
class Target:
    wer: float
    rtf: float


#: (engine, set) -> the targets. PocketSphinx keeps its own; the Whisper ones are issue 11's.
TARGETS: dict[tuple[str, str], Target] = {
    ("pocketsphinx", "librivox"): Target(wer=0.30, rtf=0.25),
    ("whisper", "librivox"): Target(wer=0.05, rtf=0.30),
    ("whisper", "heldout-ru"): Target(wer=0.20, rtf=0.30),
}
# Kept for callers of the single-engine bench.
WER_TARGET = TARGETS[("pocketsphinx", "librivox")].wer
RTF_TARGET = TARGETS[("pocketsphinx", "librivox")].rtf


# --------------------------------------------------------------------------------------------------------
# Normalisation and word error rate
# --------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z\u0430-\u044f0-9']+")  # Latin, Cyrillic without ё, digits
_ENGLISH_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def words(text: str, language: str = "en-US") -> list[str]:
    """``text`` as the words WER is counted over; see the module docstring for the normalisation."""
    lowered = spell_numbers(text.lower().replace("\u0451", "\u0435"), language)  # ё read as its plain letter
    if language.lower().startswith("ru"):
        return _WORD.findall(lowered)
    return [_ENGLISH_ABBREVIATIONS.get(word, word) for word in _WORD.findall(lowered)]


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


# --------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------


def _proc_status_mib(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    now = _proc_status_mib("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------------


def _value(text: str) -> bool | int | float | str:
    lowered = text.lower()
    if lowered in ("yes", "true", "no", "false"):
        return lowered in ("yes", "true")
    if lowered in ("none", "null"):
        return "none"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _pairs(items: Iterable[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} wants KEY=VALUE, not {item!r}")
        out.append((key, raw))
    return out


def build_pocketsphinx(overrides: list[str]) -> Engine:
    from speechkit_operator.selfhosted.engines.pocketsphinx_engine import (  # noqa: PLC0415
        PocketsphinxEngine,
        PocketsphinxSettings,
    )

    fields = {f.name for f in dataclasses.fields(PocketsphinxSettings)}
    settings = PocketsphinxSettings()
    options = dict(settings.decoder_options)
    changes: dict[str, Any] = {}
    for key, raw in _pairs(overrides, "--option"):
        if key in fields and key != "decoder_options":
            changes[key] = _value(raw)
        else:
            options[key.lstrip("-")] = _value(raw)
    return PocketsphinxEngine(dataclasses.replace(settings, decoder_options=options, **changes))


def with_options(engine: Engine, overrides: list[str]) -> Engine:
    """A new engine of ``engine``'s class with fields of its ``options`` dataclass changed (``whisper``:
    ``beam_size``, ``vad_filter``, ``condition_on_previous_text``, ``cpu_threads``, ``compute_type``)."""
    options = getattr(engine, "options", None)
    if options is None or not dataclasses.is_dataclass(options) or isinstance(options, type):
        raise SystemExit(f"--option is not understood by the {engine.name} engine")
    fields = {f.name for f in dataclasses.fields(options)}
    changes: dict[str, Any] = {}
    for key, raw in _pairs(overrides, "--option"):
        if key not in fields:
            raise SystemExit(
                f"--option {key}: the {engine.name} engine's options are {', '.join(sorted(fields))}"
            )
        changes[key] = _value(raw)
    rebuilt: Engine = type(engine)(dataclasses.replace(options, **changes))  # type: ignore[call-arg]
    return rebuilt


def build_engine(name: str, model: str | None, overrides: list[str]) -> Engine:
    """The engine to measure; the model is chosen before the engine is built (in the worker only)."""
    if name == "pocketsphinx" and overrides:
        return build_pocketsphinx(overrides)
    if model is not None and name == "whisper":
        os.environ[WHISPER_MODEL_ENV] = model
    engine = get_engine(name)
    return with_options(engine, overrides) if overrides else engine


# --------------------------------------------------------------------------------------------------------
# Measuring one engine (in a worker process)
# --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    channel: str
    seconds: float
    decode_cpu: float
    recognize_cpu: float
    recognize_wall: float
    errors: int | None
    reference_words: int
    hypothesis: str

    @property
    def wer(self) -> float | None:
        if self.errors is None or not self.reference_words:
            return None
        return self.errors / self.reference_words


@dataclass
class SetResult:
    set_name: str
    language: str
    rows: list[Row] = field(default_factory=list)
    skipped: str | None = None

    def scored(self) -> list[Row]:
        if self.set_name == "librivox":
            return [row for row in self.rows if row.name in UTTERANCES]
        return [row for row in self.rows if row.errors is not None]

    def summary(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"set": self.set_name, "language": self.language, "skipped": self.skipped}
        scored = self.scored()
        errors = sum(row.errors or 0 for row in scored)
        total_words = sum(row.reference_words for row in scored)
        cpu = sum(row.recognize_cpu for row in self.rows)
        wall = sum(row.recognize_wall for row in self.rows)
        audio = sum(row.seconds for row in self.rows)
        return {
            "set": self.set_name,
            "language": self.language,
            "files": len({row.name for row in self.rows}),
            "scored": len(scored),
            "errors": errors,
            "words": total_words,
            "wer": errors / total_words if total_words else None,
            "cpu": cpu,
            "wall": wall,
            "audio": audio,
            "rtf": cpu / audio if audio else None,
            "rtf_wall": wall / audio if audio else None,
        }


def set_dir(set_name: str, audio_dir: Path, sentences: Path | None) -> Path:
    if set_name == "librivox":
        return audio_dir
    sys.path.insert(0, str(BENCH_DIR))
    from heldout.synthesize import ensure_set  # noqa: PLC0415

    return ensure_set(set_name.removeprefix("heldout-"), sentences_path=sentences)


def measure(engine: Engine, audio_dir: Path, language: str, repeat: int, score_language: str) -> list[Row]:
    files: dict[str, Any] = json.loads((audio_dir / "manifest.json").read_text(encoding="utf-8"))["files"]
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
            cpu = wall = float("inf")
            hypothesis = ""
            for _ in range(repeat):
                started, started_wall = time.process_time(), time.perf_counter()
                utterances = engine.recognize(pcm, language)
                cpu = min(cpu, time.process_time() - started)
                wall = min(wall, time.perf_counter() - started_wall)
                hypothesis = " ".join(u.text for u in utterances)
            reference = words(refs[tag], score_language) if tag in refs else None
            rows.append(
                Row(
                    name=name,
                    channel=tag,
                    seconds=decoded.duration_seconds,
                    decode_cpu=decode_cpu / decoded.channel_count,
                    recognize_cpu=cpu,
                    recognize_wall=wall,
                    errors=None
                    if reference is None
                    else edit_distance(reference, words(hypothesis, score_language)),
                    reference_words=len(reference or []),
                    hypothesis=hypothesis,
                )
            )
    return rows


def print_rows(rows: Sequence[Row]) -> None:
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


def _load(engine: Engine, language: str) -> None:
    warm_up = getattr(engine, "warm_up", None)
    if callable(warm_up):
        warm_up()
    else:
        engine.recognize(np.zeros(ENGINE_SAMPLE_RATE, dtype=np.int16), language)


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build one engine/model, recognise every asked set, and return what was measured."""
    label = args.engine[0] + (f" {args.model}" if args.model else "")
    result: dict[str, Any] = {"engine": args.engine[0], "model": args.model, "label": label, "sets": []}
    before = rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        engine = build_engine(args.engine[0], args.model, args.options)
        first_language = args.language or SET_LANGUAGE[args.sets[0]]
        _load(engine, first_language if first_language in engine.languages else next(iter(engine.languages)))
    except UnknownEngineError as error:
        result["skipped"] = str(error)
        return result
    except Exception as error:  # a missing extra, a corrupted model: report it, measure the others
        result["failed"] = f"could not load: {type(error).__name__}: {error}"
        print(f"== {label}: {result['failed']}", file=sys.stderr)
        return result
    result["load_wall"] = time.perf_counter() - wall
    result["load_cpu"] = time.process_time() - cpu
    result["load_rss"] = rss_mib() - before
    settings = getattr(engine, "settings", None)
    result["settings"] = None if settings is None else str(settings)
    print(f"== {label}" + (f"  settings: {settings}" if settings is not None else ""))
    for set_name in args.sets:
        language = args.language or SET_LANGUAGE[set_name]
        outcome = SetResult(set_name, language)
        try:
            check_language(engine, language)
        except UnsupportedLanguageError as error:
            outcome.skipped = str(error)
            print(f"-- {set_name}: skipped: {error}\n")
            result["sets"].append(outcome.summary())
            continue
        directory = set_dir(set_name, args.audio_dir, args.sentences)
        outcome.rows = measure(engine, directory, language, max(args.repeat, 1), SET_LANGUAGE[set_name])
        print(f"-- {set_name} ({language})")
        print_rows(outcome.rows)
        summary = outcome.summary()
        print(
            f"WER {summary['wer']:.1%} ({summary['errors']}/{summary['words']} words over "
            f"{summary['scored']} {'utterances' if set_name == 'librivox' else 'sentences'}), "
            f"RTF per core {summary['rtf']:.3f} "
            f"({summary['cpu']:.1f} CPU s / {summary['audio']:.1f} audio s)\n"
        )
        result["sets"].append(summary)
    result["peak_rss"] = peak_rss_mib()
    return result


# --------------------------------------------------------------------------------------------------------
# The parent: one worker process per engine/model, then the summary
# --------------------------------------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    registered = set(available_engines())
    names = sorted(registered) if args.all else (args.engine or ["pocketsphinx"])
    out: list[tuple[str, str | None]] = []
    for name in names:
        if name not in registered:
            print(f"skipping engine {name!r}: not registered (available: {', '.join(sorted(registered))})")
            continue
        known = MODELS.get(name, (None,))
        models = [args.model] if args.model and known != (None,) else list(known)
        out += [(name, model) for model in models]
    return out


def run_variant(name: str, model: str | None, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(dict(_pairs(args.env, "--env")))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(out),
            "--engine",
            name,
            "--audio-dir",
            str(args.audio_dir),
            "--repeat",
            str(args.repeat),
        ]
        command += ["--model", model] if model else []
        command += ["--language", args.language] if args.language else []
        command += ["--sentences", str(args.sentences.resolve())] if args.sentences else []
        for set_name in args.sets:
            command += ["--set", set_name]
        for option in args.options:
            command += ["--option", option]
        sys.stdout.flush()
        completed = subprocess.run(command, env=env, check=False)  # noqa: S603 - this script, our arguments
        if completed.returncode != 0 or not out.is_file():
            label = name + (f" {model}" if model else "")
            return {
                "engine": name,
                "model": model,
                "label": label,
                "failed": completed.returncode,
                "sets": [],
            }
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def report(results: list[dict[str, Any]]) -> bool:
    """Print the summary as a Markdown table; whether every measured engine/set met its targets."""
    print(
        "| engine | model | set | WER | errors/words | RTF per core (wall) | audio s "
        "| load s wall / CPU | load +MiB | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    all_met = True
    notes: list[str] = []
    for result in results:
        engine, model = result["engine"], result.get("model") or "-"
        if "skipped" in result or "failed" in result:
            why = result.get("skipped") or result["failed"]
            why = f"worker exited with {why}" if isinstance(why, int) else why
            print(f"| {engine} | {model} | - | {why} | | | | | | |")
            all_met = all_met and "skipped" in result
            continue
        load = f"{result['load_wall']:.2f} / {result['load_cpu']:.2f}"
        for summary in result["sets"]:
            if "skipped" in summary:
                print(
                    f"| {engine} | {model} | {summary['set']} "
                    f"| skipped: no {summary['language']} | | | | | | |"
                )
                continue
            rtf = f"{summary['rtf']:.3f} ({summary['rtf_wall']:.3f})"
            print(
                f"| {engine} | {model} | {summary['set']} | {_pct(summary['wer'])} | "
                f"{summary['errors']}/{summary['words']} | {rtf} | {summary['audio']:.1f} | {load} | "
                f"{result['load_rss']:.0f} | {result['peak_rss']:.0f} |"
            )
            target = TARGETS.get((engine, summary["set"]))
            if target is None or summary["wer"] is None:
                continue
            wer_ok, rtf_ok = summary["wer"] <= target.wer, summary["rtf"] <= target.rtf
            all_met = all_met and wer_ok and rtf_ok
            notes.append(
                f"{engine} {model} {summary['set']}: WER <= {target.wer:.0%} "
                f"{'met' if wer_ok else 'NOT MET'}, RTF <= {target.rtf} {'met' if rtf_ok else 'NOT MET'}"
            )
    print()
    for note in notes:
        print(note)
    return all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR, help="the LibriVox set")
    parser.add_argument("--engine", action="append", default=[], help="an engine name (repeatable)")
    parser.add_argument("--model", default=None, help="one model of the engine (default: each of them)")
    parser.add_argument("--all", action="store_true", help="every registered engine, each of its models")
    parser.add_argument(
        "--set",
        dest="set_args",
        action="append",
        default=[],
        metavar="SET",
        help="librivox (default), heldout-ru or all; KEY=VALUE is taken as --option KEY=VALUE",
    )
    parser.add_argument(
        "--sentences",
        type=Path,
        default=None,
        help="heldout-ru: these sentences (bench/heldout/ru/sentences.json's layout) instead of the set's",
    )
    parser.add_argument("--language", default=None, help="recognise every set in this language (e.g. auto)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="recognise each channel N times, keep the least CPU"
    )
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the worker")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sets: list[str] = []
    for item in args.set_args:
        if "=" in item:
            args.options.append(item)
        elif item == "all":
            sets += SETS
        elif item in SETS:
            sets.append(item)
        else:
            parser.error(f"--set: unknown set {item!r} (known: {', '.join(SETS)}, all)")
    args.sets = list(dict.fromkeys(sets or ["librivox"]))
    if "librivox" in args.sets and not (args.audio_dir / "manifest.json").is_file():
        print(f"no manifest.json in {args.audio_dir}", file=sys.stderr)
        return 2

    if args.worker is not None:
        result = run_worker(args)
        args.worker.write_text(json.dumps(result))
        return 0

    chosen = variants(args)
    if not chosen:
        print("no engine to measure", file=sys.stderr)
        return 2
    results = [run_variant(name, model, args) for name, model in chosen]
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
