"""Synthesise the held-out Russian sentences into 16 kHz mono WAVs in a cache outside the repository.

    python bench/heldout/synthesize.py                 # into ~/.cache/speechkit-operator/heldout/ru
    python bench/heldout/synthesize.py --out DIR       # elsewhere
    python bench/heldout/synthesize.py --force         # again, even where the cache is current
    python bench/heldout/synthesize.py --sentences FILE.json   # other sentences, same layout
    python bench/heldout/synthesize.py --demo examples/audio   # the demo's Russian samples instead

Needs Debian's ``festival`` and ``festvox-ru`` (``apt-get install -y festival festvox-ru``). Each sentence
of ``ru/sentences.json`` is spoken by Festival's ``msu_ru_nsh_clunits`` voice (``text2wave``, UTF-8 text,
which is what festvox-ru reads) as 16-bit PCM at 16 kHz, mono. Next to the WAVs it writes a
``manifest.json`` in the layout of ``../shared/audio/manifest.json`` (``files`` → name → format,
encoding, rate, channels, seconds, text), so ``bench/engine_quality.py --set heldout-ru`` scores them as
it scores the shared corpus.

The audio is not committed: it is reproducible from the sentences and the voice. A WAV is synthesised
again when its sentence, the voice or this script's synthesis settings change (``source`` in the
manifest records the sha256 of each sentence's text with them).

The voice's licence (``/usr/share/doc/festvox-ru/copyright``): copyright 2005 Nickolay V. Shmyrev,
a permissive BSD-like licence ("use and distribute ... without restriction"), with notice retained,
modifications marked and the authors' names not used for endorsement. Audio made with it may be
redistributed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETS_DIR = Path(__file__).resolve().parent
VOICE = "msu_ru_nsh_clunits"
SAMPLE_RATE = 16000
#: Everything besides the text that decides the audio; part of each file's fingerprint.
SYNTHESIS = f"festival text2wave voice={VOICE} rate={SAMPLE_RATE} otype=riff encoding=utf-8"


#: The demo's Russian samples (``examples/audio/ru-*.wav``, committed): not in any held-out set.
DEMO_SAMPLES = {
    "ru-greeting.wav": "Добрый день! Спасибо, что позвонили в нашу компанию. Чем я могу вам помочь?",
    "ru-courier.wav": "Курьер привезёт вашу посылку завтра. Пожалуйста, не выключайте телефон: "
    "он позвонит вам за час до приезда.",
}


def default_cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "speechkit-operator" / "heldout"


@dataclass(frozen=True)
class Sentence:
    id: str
    text: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{SYNTHESIS}\n{self.text}".encode()).hexdigest()


def sentences_file(set_name: str) -> Path:
    """``bench/heldout/<set_name>/sentences.json``."""
    return SETS_DIR / set_name / "sentences.json"


def load_sentences(path: Path) -> tuple[str, list[Sentence]]:
    """The language code and the sentences of a ``sentences.json`` (``language``, ``sentences``: id, text)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    sentences = [Sentence(str(item["id"]), str(item["text"])) for item in data["sentences"]]
    ids = [s.id for s in sentences]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate sentence ids in {path}")
    return str(data["language"]), sentences


def text2wave() -> str:
    found = shutil.which("text2wave")
    if found is None:
        raise SystemExit(
            "text2wave not found: install Festival and the Russian voice "
            "(apt-get install -y festival festvox-ru)"
        )
    return found


def synthesize(text: str, out: Path) -> float:
    """Speak ``text`` (Russian, UTF-8) into ``out`` as 16 kHz mono 16-bit WAV; its length in seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "text.txt"
        source.write_text(text + "\n", encoding="utf-8")
        partial = Path(tmp) / "speech.wav"
        completed = subprocess.run(  # noqa: S603 - our own sentences, a fixed program
            [
                text2wave(),
                "-eval",
                f"(voice_{VOICE})",
                "-F",
                str(SAMPLE_RATE),
                "-otype",
                "riff",
                "-o",
                str(partial),
                str(source),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0 or not partial.is_file():
            raise RuntimeError(f"text2wave failed ({completed.returncode}): {completed.stderr.strip()}")
        seconds = check_wav(partial)
        shutil.move(partial, out)
    return seconds


def check_wav(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        if shape != (1, 2, SAMPLE_RATE):
            raise RuntimeError(f"{path}: expected mono 16-bit {SAMPLE_RATE} Hz, got {shape}")
        frames = wav.getnframes()
        if frames == 0:
            raise RuntimeError(f"{path}: no audio")
        return frames / SAMPLE_RATE


def ensure_set(
    set_name: str = "ru",
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    sentences_path: Path | None = None,
) -> Path:
    """Synthesise what is missing or stale; the directory holding the WAVs and their ``manifest.json``.

    ``sentences_path`` replaces ``bench/heldout/<set_name>/sentences.json`` (sentences someone else
    wrote, to check a WER on sentences the engine's authors have not seen); its audio is cached under
    a name of its own.
    """
    path = sentences_path or sentences_file(set_name)
    language, sentences = load_sentences(path)
    if sentences_path is not None:
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        set_name = f"{set_name}-{path.stem}-{digest}"
    out_dir = (cache_dir or default_cache_dir()) / set_name
    manifest_path = out_dir / "manifest.json"
    previous: dict[str, Any] = {}
    if manifest_path.is_file() and not force:
        previous = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
    files: dict[str, Any] = {}
    made = 0
    for sentence in sentences:
        name = f"{sentence.id}.wav"
        entry = previous.get(name)
        if entry is not None and entry.get("source") == sentence.fingerprint and (out_dir / name).is_file():
            files[name] = entry
            continue
        seconds = synthesize(sentence.text, out_dir / name)
        made += 1
        files[name] = {
            "format": "wav",
            "encoding": "LINEAR16_PCM",
            "sampleRateHertz": SAMPLE_RATE,
            "channels": 1,
            "seconds": round(seconds, 2),
            "text": sentence.text,
            "source": sentence.fingerprint,
        }
    for stale in set(previous) - set(files):
        (out_dir / stale).unlink(missing_ok=True)
    manifest = {
        "source": f"{path}, synthesised with {SYNTHESIS} "
        "(festvox-ru: copyright 2005 Nickolay V. Shmyrev, BSD-like licence)",
        "language": language,
        "files": files,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if made:
        print(f"synthesised {made} of {len(sentences)} sentences into {out_dir}", file=sys.stderr)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=None, help="cache directory (default: %(default)s)")
    parser.add_argument("--set", dest="set_name", default="ru", help="a folder of bench/heldout")
    parser.add_argument("--sentences", type=Path, default=None, help="another sentences.json instead")
    parser.add_argument("--force", action="store_true", help="synthesise every sentence again")
    parser.add_argument(
        "--demo", type=Path, default=None, metavar="DIR", help="write the demo's Russian samples into DIR"
    )
    args = parser.parse_args(argv)
    if args.demo is not None:
        for name, text in DEMO_SAMPLES.items():
            seconds = synthesize(text, args.demo / name)
            print(f"{args.demo / name}: {seconds:.2f} s")
        return 0
    out_dir = ensure_set(args.set_name, args.out, force=args.force, sentences_path=args.sentences)
    files = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))["files"]
    total = sum(entry["seconds"] for entry in files.values())
    print(f"{len(files)} files, {total:.1f} s of speech, in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
