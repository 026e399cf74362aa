"""A streaming session with a fake recogniser: the config, the order of partial and final results, the
limits and the errors. No processes, no gRPC: the session reads and writes through two functions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.streaming.recognition import (
    Recognition,
    RecognitionFailedError,
    TextOptions,
)
from speechkit_operator.selfhosted.streaming.session import (
    SessionError,
    SessionLimits,
    StreamingSession,
    StreamingSpec,
    parse_config,
)
from tests.unit.test_streaming_endpointing import noise, speech

LANGUAGES = frozenset({"en-US", "ru-RU", "auto"})
Encoding = pb.RecognitionSpec.AudioEncoding


def config(**spec: object) -> pb.StreamingRecognitionRequest:
    return pb.StreamingRecognitionRequest(
        config=pb.RecognitionConfig(specification=pb.RecognitionSpec(**spec))  # type: ignore[arg-type]
    )


def audio(data: bytes) -> pb.StreamingRecognitionRequest:
    return pb.StreamingRecognitionRequest(audio_content=data)


def lpcm_config(**spec: object) -> pb.StreamingRecognitionRequest:
    return config(
        language_code="en-US", audio_encoding=Encoding.LINEAR16_PCM, sample_rate_hertz=16000, **spec
    )


def chunks(pcm: NDArray[np.int16], seconds: float = 0.4) -> list[pb.StreamingRecognitionRequest]:
    data = pcm.tobytes()
    size = round(seconds * 16000) * 2
    return [audio(data[start : start + size]) for start in range(0, len(data), size)]


class FakeRecognizer:
    """Answers ``<seconds>s`` for each piece, after ``delay``; remembers what it was asked. With
    ``starved_partials`` a partial result never gets a worker (the queue is full of other jobs)."""

    def __init__(
        self,
        delay: float = 0.0,
        *,
        idle: bool = True,
        fail: RecognitionFailedError | None = None,
        starved_partials: bool = False,
    ):
        self.delay = delay
        self.idle = idle
        self.fail = fail
        self.starved_partials = starved_partials
        self.calls: list[tuple[float, bool]] = []
        self.options: list[TextOptions] = []

    @property
    def has_idle_worker(self) -> bool:
        return self.idle

    @property
    def waiting_jobs(self) -> int:
        """Other jobs wait for a worker when none is free."""
        return 0 if self.idle else 100

    async def recognize(
        self,
        pcm: NDArray[np.int16],
        options: TextOptions,
        *,
        partial: bool,
        on_start: Callable[[], None] | None = None,
    ) -> Recognition:
        self.calls.append((round(len(pcm) / 16000, 2), partial))
        self.options.append(options)
        if partial and self.starved_partials:
            await asyncio.Event().wait()  # never given a worker
        if on_start is not None:
            on_start()
        await asyncio.sleep(self.delay)
        if self.fail is not None and (not partial or self.fail.code is GrpcCode.INTERNAL):
            raise self.fail
        seconds = len(pcm) / 16000
        return Recognition(text=f"{seconds:.2f}s", words=(Word("word", 0.1, seconds - 0.1),))


class Client:
    """The client's side: messages (each after an optional pause), and the responses received."""

    def __init__(self, messages: Sequence[pb.StreamingRecognitionRequest], pause: float = 0.0) -> None:
        self.messages = list(messages)
        self.pause = pause
        self.responses: list[pb.StreamingRecognitionResponse] = []

    async def read(self) -> pb.StreamingRecognitionRequest | None:
        if not self.messages:
            return None
        if self.pause:
            await asyncio.sleep(self.pause)
        return self.messages.pop(0)

    async def write(self, response: pb.StreamingRecognitionResponse) -> None:
        self.responses.append(response)

    def results(self) -> list[tuple[str, str]]:
        """``("partial"|"final", text)`` for each response."""
        found = []
        for response in self.responses:
            (chunk,) = response.chunks
            assert chunk.final == chunk.end_of_utterance
            found.append(("final" if chunk.final else "partial", chunk.alternatives[0].text))
        return found


def two_utterances() -> NDArray[np.int16]:
    return np.concatenate([noise(0.5), speech(2.0), noise(1.0), speech(1.5), noise(0.3)])


async def run(
    client: Client, recognizer: FakeRecognizer | None = None, **kwargs: object
) -> tuple[StreamingSession, FakeRecognizer]:
    recognizer = recognizer or FakeRecognizer()
    session = StreamingSession(recognizer, LANGUAGES, **kwargs)  # type: ignore[arg-type]
    async with asyncio.timeout(20):
        await session.run(client.read, client.write)
    return session, recognizer


# --- The config ------------------------------------------------------------------------------------------


def test_the_config_gets_speechkits_defaults() -> None:
    spec = parse_config(config(), {"ru-RU"})
    assert spec == StreamingSpec(language_code="ru-RU", model="general", encoding="OGG_OPUS")
    spec = parse_config(
        config(
            language_code="en-US",
            model="general:rc",
            audio_encoding=Encoding.LINEAR16_PCM,
            sample_rate_hertz=8000,
            partial_results=True,
            profanity_filter=True,
            raw_results=True,
            literature_text=True,
        ),
        LANGUAGES,
    )
    assert (spec.encoding, spec.sample_rate_hertz, spec.model) == ("LINEAR16_PCM", 8000, "general:rc")
    assert spec.text_options() == TextOptions(
        "en-US", profanity_filter=True, raw_results=True, literature_text=True
    )
    assert spec.describe() == "en-US, LINEAR16_PCM 8000 Hz, partial results"
    # Ogg Opus carries its own rate: the declared one does not matter.
    assert (
        parse_config(config(language_code="en-US", sample_rate_hertz=44100), LANGUAGES).encoding == "OGG_OPUS"
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (audio(b"\0\0"), "The first message of a session must carry the config"),
        (config(audio_encoding=Encoding.MP3), "audioEncoding: MP3 is not supported for streaming"),
        (config(audio_encoding=7), "audioEncoding: the unknown value 7 is not supported"),
        (
            config(audio_encoding=Encoding.LINEAR16_PCM, sample_rate_hertz=22050),
            "sampleRateHertz: unsupported value 22050 for LINEAR16_PCM; expected 8000, 16000 or 48000",
        ),
        (config(language_code="xx-XX"), 'languageCode: language "xx-XX" is not supported by this service'),
        (config(audio_channel_count=2), "audioChannelCount: streaming recognition takes one channel, got 2"),
    ],
)
def test_a_bad_config_is_invalid_argument_naming_the_field(
    request_: pb.StreamingRecognitionRequest, message: str
) -> None:
    with pytest.raises(SessionError) as raised:
        parse_config(request_, LANGUAGES)
    assert raised.value.code is GrpcCode.INVALID_ARGUMENT
    assert message in raised.value.message


# --- Results ------------------------------------------------------------------------------------------------


async def test_partial_results_then_a_final_one_for_each_utterance() -> None:
    client = Client([lpcm_config(partial_results=True), *chunks(two_utterances())])

    session, recognizer = await run(client)

    results = client.results()
    kinds = [kind for kind, _ in results]
    assert kinds.count("final") == 2
    first_final = kinds.index("final")
    assert "partial" in kinds[:first_final] and "partial" in kinds[first_final + 1 :]
    assert kinds[-1] == "final"
    # The finals hold the whole utterances: 2 s and 1.5 s of speech, 0.3 s before and 0.15 s after (the
    # speculative final, recognised when the utterance paused, 150 ms into its silence, is the final).
    finals = [text for kind, text in results if kind == "final"]
    assert finals == ["2.46s", "1.96s"]
    assert session.summary.utterances == 2 and session.summary.finals == 2
    assert all(options.language_code == "en-US" for options in recognizer.options)
    # Word times count from the start of the session.
    words = client.responses[first_final].chunks[0].alternatives[0].words
    assert words[0].start_time.ToMilliseconds() == 200 + 100
    assert client.responses[first_final].chunks[0].alternatives[0].confidence == 1.0


async def test_without_partial_results_only_finals_come() -> None:
    client = Client([lpcm_config(), *chunks(two_utterances())])
    _, recognizer = await run(client)
    assert client.results() == [("final", "2.46s"), ("final", "1.96s")]
    assert all(not partial for _, partial in recognizer.calls)


async def test_the_last_utterance_is_final_when_the_client_ends_its_stream() -> None:
    client = Client([lpcm_config(), *chunks(np.concatenate([noise(0.5), speech(1.0)]))])
    await run(client)
    assert client.results() == [("final", "1.30s")]


async def test_a_slow_recogniser_gets_the_finals_first_and_one_partial_per_utterance() -> None:
    """Audio much faster than recognition: stale partial results are dropped, never queued before a
    final; each utterance still gets one partial result, of its first half."""
    pcm = np.concatenate(
        [noise(0.3), speech(3.0), noise(0.8), speech(2.0), noise(0.8), speech(2.4), noise(0.2)]
    )
    client = Client([lpcm_config(partial_results=True), *chunks(pcm)])

    session, recognizer = await run(client, FakeRecognizer(delay=0.05))

    kinds = [kind for kind, _ in client.results()]
    assert kinds == ["partial", "final"] * 3
    # The first utterance's partial ran while it went on; the others are the first halves of theirs
    # (asked for with a final's priority: not low-priority jobs).
    assert recognizer.calls[0][1]
    assert {1.25, 1.45} <= {seconds for seconds, partial in recognizer.calls if not partial}
    assert session.summary.partials == 3


async def test_partial_results_are_dropped_when_no_worker_is_free() -> None:
    pcm = np.concatenate([noise(0.3), speech(4.0), noise(0.8)])
    client = Client([lpcm_config(partial_results=True), *chunks(pcm)], pause=0.02)

    session, recognizer = await run(client, FakeRecognizer(delay=0.03, idle=False))

    kinds = [kind for kind, _ in client.results()]
    # The first partial waits for a worker; later ones are dropped. (The synthetic syllables pause: a
    # speculative final, run with a final's priority, comes as a partial result when speech resumes.)
    assert kinds.count("final") == 1 and kinds[-1] == "final" and kinds[0] == "partial"
    assert recognizer.calls[0][1] and sum(partial for _, partial in recognizer.calls) == 1
    assert session.summary.partials_dropped >= 3


async def test_the_profanity_filter_and_text_options_reach_the_recogniser() -> None:
    client = Client([lpcm_config(profanity_filter=True, raw_results=True), *chunks(two_utterances())])
    _, recognizer = await run(client)
    assert recognizer.options[0] == TextOptions("en-US", profanity_filter=True, raw_results=True)


# --- Limits and errors --------------------------------------------------------------------------------------


async def failed(client: Client, recognizer: FakeRecognizer | None = None, **kwargs: object) -> SessionError:
    with pytest.raises(SessionError) as raised:
        await run(client, recognizer, **kwargs)
    return raised.value


async def test_more_than_the_interval_between_messages_ends_the_session() -> None:
    client = Client([lpcm_config(), *chunks(noise(1.0))], pause=0.3)
    error = await failed(client, limits=SessionLimits(message_interval_seconds=0.2))
    assert error.code is GrpcCode.INVALID_ARGUMENT
    assert error.message.startswith("No message arrived for 0.2 s: a streaming session allows at most 0.2 s")


async def test_the_default_limits_are_speechkits() -> None:
    limits = SessionLimits()
    assert (limits.message_interval_seconds, limits.audio_seconds, limits.audio_bytes) == (
        5.0,
        300.0,
        10485760,
    )
    assert "at most 5 s between messages" in limits.interval_error().message
    assert "the limit of 5 minutes per session" in limits.duration_error().message
    assert "the limit of 10 MB (10485760 bytes) per session" in limits.size_error().message


async def test_more_audio_than_the_duration_limit_ends_the_session() -> None:
    client = Client([lpcm_config(), *chunks(noise(3.0))])
    error = await failed(client, limits=SessionLimits(audio_seconds=2.0))
    assert error.code is GrpcCode.INVALID_ARGUMENT
    assert "longer than the limit of 2 s per session" in error.message


async def test_more_bytes_than_the_size_limit_end_the_session() -> None:
    client = Client([lpcm_config(), *chunks(noise(3.0))])
    error = await failed(client, limits=SessionLimits(audio_bytes=50_000))
    assert error.code is GrpcCode.INVALID_ARGUMENT
    assert "larger than the limit of 50000 bytes (50000 bytes) per session" in error.message


async def test_a_second_config_and_a_stream_without_config_are_invalid() -> None:
    error = await failed(Client([lpcm_config(), *chunks(noise(0.4)), lpcm_config()]))
    assert (error.code, error.message) == (
        GrpcCode.INVALID_ARGUMENT,
        "A session takes one config, in its first message; a second one came",
    )
    error = await failed(Client([]))
    assert "ended before its first message, the config" in error.message
    error = await failed(Client([audio(b"\0" * 100)]))
    assert "must carry the config" in error.message


async def test_audio_that_is_not_what_the_config_says_is_invalid_not_internal() -> None:
    client = Client([config(language_code="en-US"), audio(b"RIFF" + b"\0" * 4000)])  # OGG_OPUS by default
    error = await failed(client)
    assert error.code is GrpcCode.INVALID_ARGUMENT
    assert "not a valid Ogg Opus stream" in error.message


async def test_a_failed_final_ends_the_session_with_its_code_and_a_failed_partial_does_not() -> None:
    client = Client([lpcm_config(partial_results=True), *chunks(two_utterances())])
    broken = FakeRecognizer(fail=RecognitionFailedError(GrpcCode.DEADLINE_EXCEEDED, "took too long"))
    error = await failed(client, broken)
    assert (error.code, error.message) == (GrpcCode.DEADLINE_EXCEEDED, "took too long")


async def test_stopping_sends_the_final_in_progress_then_unavailable() -> None:
    pcm = np.concatenate([noise(0.3), speech(3.0)])
    client = Client([lpcm_config(), *chunks(pcm)], pause=0.1)
    session = StreamingSession(FakeRecognizer(), LANGUAGES)
    task = asyncio.create_task(session.run(client.read, client.write))
    await asyncio.sleep(0.5)
    session.stop()
    with pytest.raises(SessionError) as raised:
        async with asyncio.timeout(5):
            await task
    assert raised.value.code is GrpcCode.UNAVAILABLE
    assert [kind for kind, _ in client.results()] == ["final"]


async def test_the_final_is_the_recognition_started_when_the_utterance_paused() -> None:
    """Each utterance is recognised once for its final: when it paused (150 ms of silence), not again
    when the end-pointer ended it (400 ms)."""
    client = Client([lpcm_config(), *chunks(two_utterances())])
    _, recognizer = await run(client)
    assert recognizer.calls == [(2.46, False), (1.96, False)]
    assert client.results() == [("final", "2.46s"), ("final", "1.96s")]


async def test_a_pause_that_speech_resumes_gives_a_partial_result_not_a_final() -> None:
    """A 250 ms pause: the speculative recognition of the utterance so far is sent as a partial result;
    the final is the whole utterance."""
    pcm = np.concatenate([noise(0.5), speech(1.0), noise(0.25), speech(1.0), noise(0.8)])
    client = Client([lpcm_config(partial_results=True), *chunks(pcm)])
    session, recognizer = await run(client, partial_interval_seconds=10.0)
    assert client.results() == [("partial", "1.46s"), ("final", "2.72s")]
    assert recognizer.calls == [(1.46, False), (2.72, False)]
    assert session.summary.finals == 1


# --- Review of the streaming service: limits that keep the finals, priorities, empty messages ---------------


class StallingClient(Client):
    """Sends its messages, then neither ends its stream nor sends anything more."""

    async def read(self) -> pb.StreamingRecognitionRequest | None:
        if not self.messages:
            await asyncio.Event().wait()
        return await super().read()


async def test_a_final_never_waits_for_a_partial_result_that_has_no_worker() -> None:
    """The workers are busy with other jobs: partial results (low priority) never get one; the finals
    come all the same, and the partial results waiting for a worker are dropped."""
    client = Client([lpcm_config(partial_results=True), *chunks(two_utterances())], pause=0.01)
    recognizer = FakeRecognizer(idle=False, starved_partials=True)
    session = StreamingSession(recognizer, LANGUAGES)
    async with asyncio.timeout(5):
        await session.run(client.read, client.write)
    assert client.results() == [("final", "2.46s"), ("final", "1.96s")]
    assert session.summary.partials_dropped >= 1


async def test_the_guaranteed_partial_result_is_skipped_when_no_worker_is_free() -> None:
    """Audio much faster than real time and no free worker: no partial result is asked for before a final
    (it would wait for a worker the final needs)."""
    client = Client([lpcm_config(partial_results=True), *chunks(two_utterances())])
    session = StreamingSession(FakeRecognizer(idle=False, starved_partials=True), LANGUAGES)
    async with asyncio.timeout(5):
        await session.run(client.read, client.write)
    assert [kind for kind, _ in client.results()] == ["final", "final"]


async def test_a_partial_result_still_waiting_for_a_worker_gives_way_to_the_guaranteed_one() -> None:
    """A worker is free for a final's priority but the low-priority partial results have not got one when
    each utterance ends (audio sent faster than real time): the guaranteed partial result (the first half)
    takes the waiting one's place, so every utterance still gets a partial result before its final (the
    real-Whisper test lost one in about one run in six)."""
    client = Client([lpcm_config(partial_results=True), *chunks(two_utterances())])
    session = StreamingSession(FakeRecognizer(starved_partials=True), LANGUAGES)
    async with asyncio.timeout(5):
        await session.run(client.read, client.write)
    assert [kind for kind, _ in client.results()] == ["partial", "final", "partial", "final"]
    assert session.summary.partials == 2 and session.summary.partials_dropped >= 2


class OneForeignJobWaiting(FakeRecognizer):
    """No idle worker, and one job of another session (final priority) waits for one."""

    @property
    def waiting_jobs(self) -> int:
        return 1


async def test_a_waiting_partial_result_is_not_counted_as_the_sessions_own_final_priority_job() -> None:
    """Only final-priority jobs count against the pool's ``waiting_jobs``: this session's low-priority
    partial result waiting for a worker must not make room for a guaranteed one that would queue behind
    another session's job (and hold this session's final behind it)."""
    client = Client([lpcm_config(partial_results=True), *chunks(two_utterances())])
    session = StreamingSession(OneForeignJobWaiting(idle=False, starved_partials=True), LANGUAGES)
    async with asyncio.timeout(5):
        await session.run(client.read, client.write)
    assert [kind for kind, _ in client.results()] == ["final", "final"]


async def test_the_duration_limit_keeps_the_finals_of_the_audio_within_it() -> None:
    pcm = np.concatenate([two_utterances(), noise(0.8), speech(2.0)])  # 8.1 s: the limit falls in the third
    client = Client([lpcm_config(), *chunks(pcm)])
    error = await failed(client, limits=SessionLimits(audio_seconds=7.0))
    assert "longer than the limit of 7 s per session" in error.message
    # Both utterances, and the third one up to the limit (0.3 s before its speech, 0.9 s of it).
    assert client.results() == [("final", "2.46s"), ("final", "1.96s"), ("final", "1.20s")]


async def test_a_stalled_client_gets_the_final_of_its_speech_then_the_limits_error() -> None:
    client = StallingClient([lpcm_config(), *chunks(np.concatenate([noise(0.5), speech(1.0)]))])
    error = await failed(client, limits=SessionLimits(message_interval_seconds=0.3))
    assert error.message.startswith("No message arrived for 0.3 s")
    assert client.results() == [("final", "1.30s")]


async def test_the_size_limit_keeps_the_audio_up_to_it() -> None:
    data = two_utterances().tobytes()
    client = Client([lpcm_config(), audio(data)])  # one message across the limit
    error = await failed(client, limits=SessionLimits(audio_bytes=len(data) - 16000))
    assert "larger than the limit of" in error.message
    assert [kind for kind, _ in client.results()] == ["final", "final"]


async def test_the_finals_after_a_limit_are_bounded_in_time() -> None:
    client = Client([lpcm_config(), *chunks(two_utterances())])
    limits = SessionLimits(audio_seconds=4.0, drain_seconds=0.2)
    error = await failed(client, FakeRecognizer(delay=1.0), limits=limits)
    assert "longer than the limit of 4 s" in error.message
    assert client.results() == []


async def test_empty_messages_do_not_keep_a_session_open() -> None:
    """An empty audio_content (or an empty message) is not an arrival for the rule of 5 s."""
    empties = [audio(b""), pb.StreamingRecognitionRequest()] * 6
    client = Client([lpcm_config(), *chunks(noise(0.4)), *empties], pause=0.1)
    error = await failed(client, limits=SessionLimits(message_interval_seconds=0.35))
    assert error.message.startswith("No message arrived for 0.35 s")


async def test_a_session_lasts_at_most_its_wall_clock_limit() -> None:
    client = Client([lpcm_config(), *[audio(b"\0\0")] * 40], pause=0.05)
    error = await failed(client, limits=SessionLimits(session_seconds=0.6))
    assert error.code is GrpcCode.INVALID_ARGUMENT
    assert error.message.startswith(
        "The session lasted longer than 0.6 s: a session carries at most 5 minutes"
    )
    assert SessionLimits().session_seconds == 360.0


async def test_an_empty_first_message_is_told_so() -> None:
    error = await failed(Client([pb.StreamingRecognitionRequest()]))
    assert error.message.endswith("must carry the config (config.specification); the first message was empty")


async def test_single_utterance_ends_the_session_after_the_first_final() -> None:
    client = Client([lpcm_config(single_utterance=True, partial_results=True), *chunks(two_utterances())])
    session, recognizer = await run(client)
    assert [result for result in client.results() if result[0] == "final"] == [("final", "2.46s")]
    assert client.results()[-1] == ("final", "2.46s")
    assert all(seconds < 3 for seconds, _ in recognizer.calls)
    assert session.summary.utterances == 1


async def test_small_messages_waiting_are_decoded_together() -> None:
    data = two_utterances().tobytes()
    client = Client([lpcm_config(), *[audio(data[i : i + 320]) for i in range(0, len(data), 320)]])
    decoded: list[int] = []
    session = StreamingSession(FakeRecognizer(), LANGUAGES)
    decode = session._decode

    def counting(decoder: object, piece: bytes) -> object:
        decoded.append(len(piece))
        return decode(decoder, piece)  # type: ignore[arg-type]

    session._decode = counting  # type: ignore[method-assign, assignment]
    async with asyncio.timeout(10):
        await session.run(client.read, client.write)
    assert client.results() == [("final", "2.46s"), ("final", "1.96s")]
    assert sum(decoded) == len(data) and len(decoded) < len(data) // 320 // 4
