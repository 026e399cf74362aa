"""Which keys a TranscriptionBatch takes, what its children are called, and the seed script's files."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import string
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechkit_operator.contracts.operation import OPERATION_ID_PATTERN
from speechkit_operator.logic.batch_selection import (
    MAX_SEED_FILE_BYTES,
    SeedMarker,
    SeedMarkerWithoutOperation,
    child_name,
    key_problem,
    parse_seed_config,
    parse_seed_marker,
    relative_key,
    seed_config_key,
    seed_marker_key,
    seed_result_key,
    selected,
)
from speechkit_operator.models.batch import BatchSourceSpec
from speechkit_operator.models.glob import compile_glob

PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def source(**fields: Any) -> BatchSourceSpec:
    return BatchSourceSpec.model_validate({"bucket": "calls", **fields})


# --------------------------------------------------------------------------------------------------
# Globs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "key", "matches"),
    [
        ("*.wav", "a.wav", True),
        ("*.wav", "x/a.wav", False),  # * never crosses a /
        ("*.wav", ".wav", True),  # * matches nothing too
        ("*.wav", "a.WAV", False),  # case-sensitive, like S3 keys
        ("**/*.wav", "a.wav", True),  # ** matches zero segments
        ("**/*.wav", "x/y/a.wav", True),
        ("**/*.wav", "x/y/a.ogg", False),
        ("2024/**", "2024/a.wav", True),
        ("2024/**", "2024/05/01/a.wav", True),
        ("2024/**", "2023/a.wav", False),
        ("a/**/b.wav", "a/b.wav", True),
        ("a/**/b.wav", "a/x/y/b.wav", True),
        ("a/**/b.wav", "a/x/y/c.wav", False),
        ("a**b.wav", "axxb.wav", True),  # ** within a segment is *
        ("a**b.wav", "ax/xb.wav", False),
        ("call-?.wav", "call-1.wav", True),
        ("call-?.wav", "call-12.wav", False),
        ("call-?.wav", "call-/.wav", False),
        ("call-[0-9].wav", "call-7.wav", True),
        ("call-[0-9].wav", "call-x.wav", False),
        ("call-[!0-9].wav", "call-x.wav", True),
        ("call-[^0-9].wav", "call-7.wav", False),
        ("[]x].wav", "].wav", True),  # a ] first belongs to the class
        ("[]x].wav", "x.wav", True),
        ("[a-].wav", "-.wav", True),  # a trailing - is a character
        ("[*].wav", "*.wav", True),  # no escapes: classes quote
        ("[*].wav", "a.wav", False),
        ("a[b.wav", "a[b.wav", True),  # an unclosed [ is a character
        ("2024-*/**", "2024-05/x/a.wav", True),
        ("2024-*/**", "2023-05/x/a.wav", False),
        ("x/*/*.wav", "x/y/a.wav", True),
        ("x/*/*.wav", "x/a.wav", False),
        ("Звонки/*.wav", "Звонки/a.wav", True),
    ],
)
def test_glob_semantics(glob: str, key: str, matches: bool) -> None:
    assert compile_glob(glob).matches(key) is matches


@pytest.mark.parametrize(
    ("glob", "message"), [("", "empty"), ("/a.wav", "starts with /"), ("[z-a]", "empty")]
)
def test_malformed_globs_are_refused(glob: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_glob(glob)


def test_hostile_globs_match_in_linear_time() -> None:
    """A backtracking regular expression would take years on these."""
    key = "a" * 1000
    started = time.perf_counter()
    assert not compile_glob("*a" * 60 + "*b").matches(key)
    assert not compile_glob("/".join(["**"] * 60) + "/b").matches("/".join(["a"] * 500))
    assert compile_glob("**/" * 40 + "*a*a*a*a*a*a*a").matches("/".join(["a" * 20] * 50))
    assert time.perf_counter() - started < 5


_SEGMENT_ALPHABET = st.sampled_from(["a", "b", "*", "?", "[ab]", "[!a]"])


@PROPERTY
@given(pattern=st.lists(_SEGMENT_ALPHABET, max_size=8).map("".join), name=st.text("ab.", max_size=10))
def test_within_a_segment_globs_are_fnmatch(pattern: str, name: str) -> None:
    assert compile_glob(pattern or "x").matches(name) == fnmatch.fnmatchcase(name, pattern or "x")


def _reference(segments: list[str], parts: list[str]) -> bool:
    """Segment-by-segment matching by recursion, ``**`` being any number of segments."""
    if not segments:
        return not parts
    head, rest = segments[0], segments[1:]
    if head == "**":
        return any(_reference(rest, parts[skip:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _reference(rest, parts[1:])


@PROPERTY
@given(
    segments=st.lists(st.sampled_from(["**", "*", "a", "a*", "?", "*b"]), min_size=1, max_size=5),
    parts=st.lists(st.sampled_from(["a", "b", "ab", "ba", ""]), min_size=1, max_size=5),
)
def test_multi_segment_globs_match_like_the_reference(segments: list[str], parts: list[str]) -> None:
    assert compile_glob("/".join(segments)).matches("/".join(parts)) == _reference(segments, parts)


@PROPERTY
@given(
    segments=st.lists(
        st.sampled_from(["**", "*", "a", "b", "a*", "*b*", "?", "?*", "[ab]", "[!a]*", "a[+-9]b", "x"]),
        min_size=1,
        max_size=8,
    ),
    parts=st.lists(st.sampled_from(["a", "b", "ab", "ba", "", "a5b", "x", "aab"]), min_size=1, max_size=8),
)
def test_deep_globs_with_classes_match_like_the_reference(segments: list[str], parts: list[str]) -> None:
    """Runs between two ``**`` are searched for along the key: the leftmost run is taken, never a
    run across a ``/`` (``[+-9]`` holds ``/`` but a segment never does)."""
    assert compile_glob("/".join(segments)).matches("/".join(parts)) == _reference(segments, parts)


@pytest.mark.parametrize(
    ("glob", "key", "matches"),
    [
        ("**/a[+-9]b/**", "q/a/b/r", False),  # the class would take the "/" of the joined key
        ("**/a[+-9]b/**", "q/a5b/r", True),
        ("**/a/b/**", "a/x/a/b", True),  # the run is found after a false start
        ("**/a/b/**", "a/x/b/a", False),
        ("x/**/a/*/**/y", "x/a/b/y", True),  # between the head and the tail, not overlapping them
        ("x/**/a/*/**/y", "x/a/y", False),
        ("**/**/a.wav", "a.wav", True),  # **/** is **
        ("**/**", "", True),
        ("**/*/**", "", True),
        ("a/**", "a", True),  # ** matches zero segments, also at the end
        ("*/**/*", "a", False),
    ],
)
def test_runs_between_double_stars(glob: str, key: str, matches: bool) -> None:
    assert compile_glob(glob).matches(key) is matches
    assert _reference(glob.split("/"), key.split("/")) is matches


def _best_of(runs: int, work: Any) -> float:
    """The shortest of ``runs`` timings of ``work()`` (the least disturbed by a busy machine)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def _worst_allowed_glob(index: int) -> str:
    """A glob at every bound of the model: 16 segments, two ``**`` with 2 segments between them,
    and wildcard segments before and after. Against the keys below the head and the tail match,
    and the run between the ``**`` is searched for along the whole key: its first segment matches
    every segment there, its second none (they have only letters and digits)."""
    return "/".join([*["?*"] * 6, "**", "*?*", f"?*[!a-z0-9]*{index}*?", "**", *["*?"] * 6])


_ALPHANUMERIC = string.ascii_lowercase + string.digits
#: 1,296 distinct segments of two letters or digits.
_TWO_CHARACTERS = [first + second for first in _ALPHANUMERIC for second in _ALPHANUMERIC]


@pytest.mark.parametrize(
    "key",
    ["input/" + "/".join(["a"] * 1000) + ".wav", "input/" + "/".join(_TWO_CHARACTERS[:1000]) + ".wav"],
    ids=["same-segments", "distinct-segments"],
)
def test_the_worst_allowed_globs_cost_little_per_key(key: str) -> None:
    """Every listed key is matched on the operator's event loop: 64 globs of the worst shape the
    model allows (tests/unit/test_batch_models.py checks that a step further is refused) match a
    key of 1,000 segments in well under 10 ms (about 3 ms on a laptop; linear in the key's length)."""
    globs = [_worst_allowed_glob(index) for index in range(63)]
    assert [len(glob.split("/")) for glob in globs] == [16] * 63
    assert not any(compile_glob(glob).matches(relative_key(key, "input/")) for glob in globs)
    # The last include matches (after 31 that do not) and no exclude does: all 64 are tried.
    spec = source(prefix="input/", include=[*globs[:31], "**/*.wav"], exclude=globs[31:])  # allowed
    assert selected(key, spec)
    assert _best_of(5, lambda: selected(key, spec)) < 0.010


def test_the_reviews_hostile_globs_match_fast_even_without_the_models_bounds() -> None:
    """64 globs of 62 ``*a*`` segments after a ``**`` (the model refuses them) against a key of
    500 segments took 0.8 s a key; the segments after the last ``**`` match the key's last ones, so
    each glob costs one look at 63 segments."""
    globs = [compile_glob("/".join(["**", *["*a*"] * 62, f"x{index}"])) for index in range(64)]
    key = "/".join(["a"] * 500) + "0.wav"
    assert not any(glob.matches(key) for glob in globs)
    assert _best_of(5, lambda: [glob.matches(key) for glob in globs]) < 0.010


# --------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "prefix", "relative"),
    [
        ("calls/a.wav", "calls/", "a.wav"),
        ("calls/a.wav", "calls", "a.wav"),
        ("calls-old/a.wav", "calls", "-old/a.wav"),
        ("a.wav", "", "a.wav"),
        ("calls//a.wav", "calls/", "/a.wav"),
    ],
)
def test_relative_key(key: str, prefix: str, relative: str) -> None:
    assert relative_key(key, prefix) == relative


def test_relative_key_outside_the_prefix_is_an_error() -> None:
    with pytest.raises(ValueError, match="not under the prefix"):
        relative_key("other/a.wav", "calls/")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("input", "input/config.json"), ("input/", "input/config.json"), ("", "config.json")],
)
def test_seed_config_key(prefix: str, expected: str) -> None:
    assert seed_config_key(prefix) == expected


@pytest.mark.parametrize(
    ("key", "taken"),
    [
        ("input/a.wav", True),
        ("input/deep/er/b.MP3", True),  # extensions ignore case
        ("input/c.opus", True),
        ("input/d.ogg", True),
        ("input/e.flac", False),
        ("input/a.wav.json", False),
        ("input/folder/", False),
        ("input/", False),
        ("other/a.wav", False),
        ("inputs/a.wav", True),  # a plain string prefix, as S3 lists it
        ("input/config.json", False),
    ],
)
def test_selected_by_prefix_and_extension(key: str, taken: bool) -> None:
    assert selected(key, source(prefix="input")) is taken


def test_the_config_and_the_seeds_files_are_never_taken() -> None:
    spec = source(prefix="", seedLog="log/", seedOutput="out/", extensions=[".wav", ".mp3"])
    assert selected("a.wav", spec)
    assert not selected("log/a.wav", spec)
    assert not selected("out/a.wav", spec)
    assert selected("logs-are-elsewhere.wav", spec)  # not under "log/"
    # Only seedLog set: the seed's results prefix defaults to out/.
    assert not selected("out/b.wav", source(seedLog="log/"))
    assert selected("out/b.wav", source())


def test_include_and_exclude_match_the_key_relative_to_the_prefix() -> None:
    spec = source(prefix="calls", include=["2024-*/**", "vip/*.wav"], exclude=["**/test-*"])
    assert selected("calls/2024-05/a.wav", spec)
    assert selected("calls/2024-05/x/y/a.wav", spec)
    assert selected("calls/vip/a.wav", spec)
    assert not selected("calls/vip/deeper/a.wav", spec)
    assert not selected("calls/2023-05/a.wav", spec)
    assert not selected("calls/2024-05/test-1.wav", spec)
    assert not selected("calls/2024-05/x/test-1.wav", spec)
    assert not selected("calls/2024-05/a.txt", spec)  # the extension still counts


def test_exclude_alone_takes_everything_else() -> None:
    spec = source(exclude=["tmp/**"])
    assert selected("a.wav", spec)
    assert selected("x/a.wav", spec)
    assert not selected("tmp/a.wav", spec)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("calls/a.wav", None),
        ("calls/../a.wav", ". or .. path segments"),
        ("./a.wav", ". or .. path segments"),
        ("/a.wav", "starts with /"),
        ("a\x01.wav", "control characters"),
        ("a" * 1021 + ".wav", "more than the 1024"),
        ("a..b/..c.wav", None),
    ],
)
def test_key_problem(key: str, problem: str | None) -> None:
    found = key_problem(key)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --------------------------------------------------------------------------------------------------
# Child names
# --------------------------------------------------------------------------------------------------


def test_child_name_is_a_readable_stem_and_a_hash() -> None:
    name = child_name("calls", "input/2024/Call 42 (final).WAV", "calls", "out/")
    stem, tag = name.rsplit("-", 1)
    assert stem == "call-42-final"
    assert re.fullmatch(r"[a-z2-7]{10}", tag)
    assert child_name("calls", "input/2024/Call 42 (final).WAV", "calls", "out/") == name


def test_child_names_differ_by_every_input() -> None:
    base = ("calls", "in/a.wav", "calls", "out/")
    names = {child_name(*base)}
    for index, other in enumerate(("calls2", "in/A.wav", "texts", "out2/")):
        changed = list(base)
        changed[index] = other
        names.add(child_name(*changed))
    names.add(child_name("calls", "other/a.wav", "calls", "out/"))
    assert len(names) == 6


def test_child_name_of_a_cyrillic_key_is_a_fixed_word_and_the_hash() -> None:
    name = child_name("calls", "звонки/запись.wav", "calls", "out/")
    assert re.fullmatch(r"audio-[a-z2-7]{10}", name)
    assert name != child_name("calls", "звонки/запись-2.wav", "calls", "out/")


def test_child_name_of_a_long_key_fits_a_label() -> None:
    name = child_name("calls", "x/" + "long-name-" * 20 + ".wav", "calls", "out/")
    assert len(name) <= 63
    assert DNS_LABEL.match(name)
    assert name.startswith("long-name-long-name")


@pytest.mark.parametrize("key", ["a/.wav", "a/---.wav", "a/-x-.ogg", "a/", "", "a/.hidden", "A_B.C.mp3"])
def test_child_name_edge_cases_are_labels(key: str) -> None:
    assert DNS_LABEL.match(child_name("calls", key, "calls", ""))


_keys = st.text(min_size=1, max_size=300)


@PROPERTY
@given(bucket=st.text(max_size=63), key=_keys, out_bucket=st.text(max_size=63), prefix=st.text(max_size=40))
def test_child_name_is_a_deterministic_dns_label(bucket: str, key: str, out_bucket: str, prefix: str) -> None:
    name = child_name(bucket, key, out_bucket, prefix)
    assert len(name) <= 63
    assert DNS_LABEL.match(name), name
    assert child_name(bucket, key, out_bucket, prefix) == name


@PROPERTY
@given(keys=st.lists(_keys, min_size=2, max_size=20, unique=True))
def test_distinct_keys_get_distinct_names(keys: list[str]) -> None:
    names = [child_name("calls", key, "calls", "out/") for key in keys]
    assert len(set(names)) == len(keys)


# --------------------------------------------------------------------------------------------------
# The seed script's files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "prefix", "log", "out", "marker", "result"),
    [
        # The seed's own style: S3_PREFIX=input, S3_PREFIX_LOG=log, S3_PREFIX_OUT=out.
        ("input/a.wav", "input", "log", "out", "log/a.wav.json", "out/a.wav.json"),
        ("input/x/b.mp3", "input", "log", "out", "log/x/b.mp3.json", "out/x/b.mp3.json"),
        ("input/a.wav", "input/", "log/", "out/", "log/a.wav.json", "out/a.wav.json"),
        ("a.wav", "", "log/", "out/", "log/a.wav.json", "out/a.wav.json"),
    ],
)
def test_seed_keys_are_the_scripts_concatenation(
    key: str, prefix: str, log: str, out: str, marker: str, result: str
) -> None:
    assert seed_marker_key(key, prefix, log) == marker
    assert seed_result_key(key, prefix, out) == result


def test_seed_keys_outside_the_prefix_are_an_error() -> None:
    with pytest.raises(ValueError, match="not under the source prefix"):
        seed_marker_key("other/a.wav", "input", "log")
    with pytest.raises(ValueError, match="not under the source prefix"):
        seed_result_key("other/a.wav", "input", "out")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"id": "e03sup6d5h7rq5rsfq3m", "done": false}', SeedMarker("e03sup6d5h7rq5rsfq3m", False)),
        (b'{"id": "e03sup6d5h7rq5rsfq3m", "done": "false"}', SeedMarker("e03sup6d5h7rq5rsfq3m", False)),
        (b'{"done": "true", "id": "e03sup6d5h7rq5rsfq3m"}', SeedMarker("e03sup6d5h7rq5rsfq3m", True)),
        (b'{"done": true, "id": "e03"}', SeedMarker("e03", True)),
        (b'{"done": " TRUE ", "id": "e03"}', SeedMarker("e03", True)),
        # What the script writes after a submission: the whole operation.
        (
            b'{"done": false, "id": "e03abc", "createdAt": "2024-05-01T10:00:00Z", '
            b'"createdBy": "ajeabc", "modifiedAt": "2024-05-01T10:00:00Z"}',
            SeedMarker("e03abc", False),
        ),
        (b"{'done': 'false', 'id': 'e03abc'}", SeedMarker("e03abc", False)),
        (b'\xef\xbb\xbf{"id": "e03", "done": false}', SeedMarker("e03", False)),  # a BOM
    ],
)
def test_parse_seed_marker(data: bytes, expected: SeedMarker) -> None:
    assert parse_seed_marker(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"Status": "None"}', "no operation id"),
        (b'{"id": "", "done": false}', "no operation id"),
        (b'{"id": "e03/../x", "done": false}', "not a SpeechKit operation id"),
        (b'{"id": "e03 abc", "done": false}', "not a SpeechKit operation id"),
        # The scheduler would not adopt these (contracts.operation.OPERATION_ID_PATTERN): refused here too.
        (b'{"id": "E03Flying", "done": false}', "not a SpeechKit operation id"),
        (b'{"id": "e03flyinG", "done": "true"}', "not a SpeechKit operation id"),
        (b'{"id": "e03_x", "done": false}', "not a SpeechKit operation id"),
        (b'{"id": "e03\\n", "done": false}', "not a SpeechKit operation id"),
        ('{"id": "e03\u0661", "done": false}'.encode(), "not a SpeechKit operation id"),  # an Arabic digit
        (b'{"id": "' + b"a" * 65 + b'", "done": false}', "not a SpeechKit operation id"),
        (b'{"id": 42, "done": false}', "not a SpeechKit operation id"),
        (b'{"id": "e03"}', "done is None"),
        (b'{"id": "e03", "done": "yes"}', "done is 'yes'"),
        (b'{"id": "e03", "done": 1}', "done is 1"),
        (b'["e03", false]', "JSON list, not an object"),
        (b"not json", "not a JSON object"),
        (b"", "not a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 4000, "not a JSON object"),  # deeper than the parser's recursion limit
        (b'{"id": "e03", "done": false}' + b" " * MAX_SEED_FILE_BYTES, "more than the 4096"),
    ],
)
def test_parse_seed_marker_refuses(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_seed_marker(data)


@pytest.mark.parametrize(
    ("data", "without_operation"),
    [
        (b'{"Status": "None"}', True),
        (b'{"id": null, "done": false}', True),
        (b'{"id": "", "done": "false"}', True),
        (b'{"id": "e03 x", "done": false}', False),
        (b"nonsense", False),
    ],
)
def test_a_marker_without_an_operation_is_told_apart(data: bytes, without_operation: bool) -> None:
    with pytest.raises(ValueError) as caught:
        parse_seed_marker(data)
    assert isinstance(caught.value, SeedMarkerWithoutOperation) is without_operation


@pytest.mark.parametrize(
    ("data", "language"),
    [
        (b'{"lang": "ru-RU"}', "ru-RU"),
        (b'{"lang": "kk-KZ", "comment": "ignored"}', "kk-KZ"),
        (b"{\n    'lang': 'en-US'\n}\n", "en-US"),  # the seed's documented form
        (b'{"lang": "auto"}', "auto"),
        (b'\xef\xbb\xbf{"lang": "tr-TR"}', "tr-TR"),
    ],
)
def test_parse_seed_config(data: bytes, language: str) -> None:
    assert parse_seed_config(data) == language


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{}", "has no lang"),
        (b'{"language": "ru-RU"}', "has no lang"),
        (b'{"lang": "russian"}', "not a language code"),
        (b'{"lang": "ru-RU\\n"}', "not a language code"),
        (b'{"lang": ["ru-RU"]}', "not a language code"),
        (b"{'lang': \"ru-RU\"}", "not a JSON object"),  # mixed quotes: not read
        (b"{'lang': 'ru-RU', 'x': True}", "not a JSON object"),  # Python, not JSON
        (b"{'lang': 'it\\'s'}", "not a JSON object"),
        (b"__import__('os').system('true')", "not a JSON object"),  # nothing is evaluated
        (b'"ru-RU"', "JSON str, not an object"),
        (b"\x80", "not UTF-8"),
        (b" " * (MAX_SEED_FILE_BYTES + 1), "more than the 4096"),
    ],
)
def test_parse_seed_config_refuses_with_an_example(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_seed_config(data)
    assert "ru-RU" in str(caught.value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["id", "done", "lang", "x"]), inner)
    ),
    max_leaves=20,
)


@PROPERTY
@given(data=st.binary(max_size=600) | _json.map(lambda value: json.dumps(value).encode()))
def test_seed_parsers_raise_only_value_errors(data: bytes) -> None:
    for parse in (parse_seed_marker, parse_seed_config):
        with contextlib.suppress(ValueError):  # anything else fails the test
            parse(data)


@PROPERTY
@given(operation_id=st.from_regex(r"[0-9a-z]{1,64}", fullmatch=True), done=st.booleans())
def test_markers_the_script_writes_are_read(operation_id: str, done: bool) -> None:
    written = json.dumps(
        {"done": "true", "id": operation_id} if done else {"done": False, "id": operation_id}
    )
    assert parse_seed_marker(written.encode()) == SeedMarker(operation_id, done)


@PROPERTY
@given(
    operation_id=st.from_regex(r"[0-9A-Za-z]{1,66}", fullmatch=True)
    | st.text(st.characters(codec="utf-8"), max_size=66)
)
def test_a_marker_id_is_read_exactly_when_the_scheduler_would_adopt_it(operation_id: str) -> None:
    """One pattern for both (contracts.operation.OPERATION_ID_PATTERN): an id the scheduler would not adopt
    is refused here, so the batch skips the object (SeedMarkerInvalid) and never submits it."""
    data = json.dumps({"id": operation_id, "done": False}).encode()
    adoptable = re.fullmatch(OPERATION_ID_PATTERN, operation_id) is not None
    try:
        marker = parse_seed_marker(data)
    except SeedMarkerWithoutOperation:
        assert operation_id == ""
    except ValueError:
        assert not adoptable
    else:
        assert adoptable
        assert marker.operation_id == operation_id


_PREFIXES = ["", "input", "input/", "calls/in", "calls/in/"]
_SEED_PREFIXES = ["log", "log/", "seed/log", "seed/log/"]


@pytest.mark.parametrize("prefix", _PREFIXES)
@pytest.mark.parametrize("seed", _SEED_PREFIXES)
def test_a_batch_looks_for_the_seeds_files_where_the_seed_puts_them_or_is_refused(
    prefix: str, seed: str
) -> None:
    """The seed script's marker is ``S3_PREFIX_LOG + key[len(S3_PREFIX):] + ".json"``: with the
    script's own variables (no trailing slashes) or with folders on both sides the marker of the
    object ``a.wav`` in the prefix's folder is ``<seed>/a.wav.json``. Mixing the two would look for
    ``<seed>a.wav.json`` or ``<seed>//a.wav.json``, find nothing and submit the object again
    although the script's operation may be running: the model refuses those pairs instead."""
    key = f"{prefix.rstrip('/')}/a.wav" if prefix else "a.wav"
    expected = f"{seed.rstrip('/')}/a.wav.json"
    for field in ("seedLog", "seedOutput"):
        try:
            spec = source(prefix=prefix, **{field: seed})
        except ValueError as refused:
            assert "disagree about the trailing slash" in str(refused)
            assert seed_marker_key(key, prefix, seed) != expected  # what it would have looked for
            continue
        kept = spec.seed_log if field == "seedLog" else spec.effective_seed_output
        assert kept is not None
        assert seed_marker_key(key, prefix, kept) == expected
        assert seed_result_key(key, prefix, kept) == expected
        # Either way round the accepted pairs are those of the script's style or of folders.
        assert seed.endswith("/") == (not prefix or prefix.endswith("/"))


@pytest.mark.parametrize("prefix", _PREFIXES)
def test_the_default_seed_output_agrees_with_the_prefix(prefix: str) -> None:
    """Only seedLog given: the results prefix is out/ or out, whichever the prefix's style wants."""
    seed_log = "log/" if not prefix or prefix.endswith("/") else "log"
    spec = source(prefix=prefix, seedLog=seed_log)
    key = f"{prefix.rstrip('/')}/a.wav" if prefix else "a.wav"
    assert spec.effective_seed_output is not None
    assert seed_result_key(key, prefix, spec.effective_seed_output) == "out/a.wav.json"
