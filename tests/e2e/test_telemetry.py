"""Traces, histograms and log lines of real turns: the real server on a free port, a real socket, real audio,
and the OpenTelemetry SDK's in-memory exporter (``telemetry: {traces: true, exporter: memory}``).

A spoken turn yields one trace: the ``turn`` root with the server's spans (endpointing from the last voiced
frame, ASR final, first audio sent, turn end) and the stages' (LLM generation with its first token, one span
per TTS clause), in parent/child order, with the critical path's spans in increasing, non-overlapping time.
An interrupted turn's spans end at the cut, the LLM's as ``cancelled``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the telemetry extra (opentelemetry-sdk) is not installed")

from opentelemetry.sdk.trace import ReadableSpan

from server.logs import JsonFormatter
from tests.client import Client, running_server, silence, test_config, tone
from tests.waiting import wait_until

Message = dict[str, Any]
TRACED = {"traces": True, "exporter": "memory"}


def spans_of(srv: Any) -> list[ReadableSpan]:
    memory = srv.tracer.memory
    assert memory is not None
    return list(memory.get_finished_spans())


def root_of(srv: Any, turn: int) -> ReadableSpan:
    roots = [s for s in spans_of(srv) if s.name == "turn" and attr(s, "turn") == turn]
    assert len(roots) == 1, [s.name for s in spans_of(srv)]
    return roots[0]


def trace(srv: Any, root: ReadableSpan) -> list[ReadableSpan]:
    assert root.context is not None
    return [s for s in spans_of(srv) if s.context is not None and s.context.trace_id == root.context.trace_id]


def attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get("voxpipe." + key)


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {len(found)} spans"
    return found[0]


def ms(ns: int | None) -> float:
    assert ns is not None
    return ns / 1e6


# A tone "said" as a microphone does: silence goes on after it. The test ASR's pause transcript ("heard 600
# milliseconds at -13 decibels") sounds unfinished to the endpointing, so the VAD waits end_incomplete_ms.
SPOKEN = silence(100) + tone(600) + silence(1500)


async def spoken_turn(c: Client) -> list[Message]:
    await c.stream_audio(SPOKEN, realtime=1.0)
    return await c.turn()


@pytest.fixture
async def traced() -> AsyncIterator[Any]:
    async with running_server(test_config(telemetry=TRACED)) as srv:
        yield srv


async def test_a_spoken_turn_is_one_trace_with_the_spans_in_order(traced: Any) -> None:
    async with Client.connect(traced.url) as c:
        msgs = await spoken_turn(c)
    assert msgs[-1]["type"] == "turn_end"
    turn = msgs[-1]["turn"]
    metrics = next(m for m in msgs if m["type"] == "metrics")
    root = root_of(traced, turn)
    spans = trace(traced, root)
    assert attr(root, "session") == c.ready["session"]
    assert attr(root, "turn_outcome") == "end"
    assert attr(root, "from_speech") is True
    assert attr(root, "voice_to_voice_ms") == metrics["voice_to_voice_ms"]

    # parent/child: the server's and the stages' spans hang under the turn; the first token under the generation
    under_root = children(spans, root)
    assert {s.name for s in under_root} == {
        "vad.endpoint",
        "asr.final",
        "llm.generate",
        "tts.clause",
        "audio.first_sent",
        "turn.end",
    }
    generate = one(under_root, "llm.generate")
    assert [s.name for s in children(spans, generate)] == ["llm.first_token"]
    first_token = one(spans, "llm.first_token")
    clauses = [s for s in under_root if s.name == "tts.clause"]
    assert [attr(s, "clause") for s in clauses] == list(range(len(clauses)))
    assert len(clauses) == 2
    assert len(spans) == 1 + len(under_root) + 1  # nothing else, nothing orphaned

    # stage and engine names, audio sizes: the clauses' audio is exactly what the client got
    assert (attr(generate, "stage"), attr(generate, "engine")) == ("llm", "echo")
    assert {(attr(s, "stage"), attr(s, "engine")) for s in clauses} == {("tts", "tone")}
    assert attr(one(spans, "vad.endpoint"), "engine") == "energy"
    assert attr(one(spans, "asr.final"), "engine") == "duration_asr"
    audio = sum(len(m["data"]) for m in msgs if m["type"] == "audio")
    assert sum(attr(s, "audio_bytes") for s in clauses) == audio
    assert attr(generate, "deltas") == len([m for m in msgs if m["type"] == "reply" and m["text"]])
    assert attr(generate, "outcome") == "ok"

    # every span inside the turn, each starting before it ends
    for span in spans:
        assert ms(root.start_time) <= ms(span.start_time) <= ms(span.end_time) <= ms(root.end_time), span.name
    # the critical path to the first audio: increasing, non-overlapping
    path = [one(spans, "vad.endpoint"), one(spans, "asr.final"), first_token, one(spans, "audio.first_sent")]
    for before, after in itertools.pairwise(path):
        assert ms(before.end_time) <= ms(after.start_time), f"{before.name} overlaps {after.name}"
    assert ms(first_token.end_time) <= ms(clauses[0].start_time) <= ms(path[-1].start_time)
    assert ms(clauses[0].end_time) <= ms(clauses[1].start_time)
    assert ms(path[-1].end_time) <= ms(one(spans, "turn.end").start_time)
    # voice-to-voice is the path from the last voiced frame to the first audio sent, as the metrics say
    assert ms(path[-1].end_time) - ms(path[0].start_time) == pytest.approx(metrics["voice_to_voice_ms"], abs=0.2)
    for stage, first_ms in metrics["first_output_ms"].items():
        assert first_ms > 0, stage


async def test_an_interrupted_turn_ends_its_spans_at_the_cut() -> None:
    # a slow LLM (a word every 200 ms): its generation is still running when the user barges in (the first
    # clause, "You said: heard ... decibels.", is 8 words: at 80 ms a word the reply was done by the cut)
    config = test_config(telemetry=TRACED)
    config["pipeline"][2]["delay_ms"] = 200
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        await c.stream_audio(SPOKEN, realtime=1.0)
        first_audio = await c.recv_type("audio", timeout=10)
        turn = first_audio["turn"]
        await c.stream_audio(tone(300), realtime=1.0)  # barge-in: 100 ms of voice over the agent suffices
        cut = await c.recv_until(lambda m: m["type"] == "interrupted" and m["turn"] == turn)
        assert not [m for m in cut if m["type"] == "turn_end" and m["turn"] == turn]
        root = root_of(srv, turn)
        await wait_until(lambda: any(s.name == "llm.generate" for s in trace(srv, root)))
        spans = trace(srv, root)
    assert attr(root, "turn_outcome") == "interrupted"
    closing = one(spans, "turn.interrupted")
    assert attr(closing, "cause") == "barge_in"
    assert attr(closing, "played_ms") == cut[-1]["played_ms"]
    cut_ms = ms(closing.start_time)
    assert ms(root.end_time) == cut_ms
    generate = one(spans, "llm.generate")
    assert attr(generate, "outcome") == "cancelled"
    assert 0 < attr(generate, "deltas") < 13  # "You said: heard ... I remember 0 messages." is 13 words
    # every span of the turn ended by the cut; the cancelled generation as the cancellation reached it
    for span in spans:
        assert ms(span.end_time) <= cut_ms + 100, f"{span.name} ended {ms(span.end_time) - cut_ms:.1f} ms after the cut"
    assert ms(generate.end_time) >= cut_ms
    # nothing of the cut turn was traced after it: no second clause, no turn.end
    assert "turn.end" not in {s.name for s in spans}


async def test_telemetry_off_records_nothing_and_the_turn_is_the_same() -> None:
    async with running_server(test_config()) as srv, Client.connect(srv.url) as c:
        assert srv.tracer.enabled is False
        msgs = await spoken_turn(c)
    assert msgs[-1]["type"] == "turn_end"
    assert getattr(srv.tracer, "memory", None) is None


async def test_upstream_attempts_are_spans_with_the_endpoint_and_retry_count() -> None:
    from tests.fakes.services import FakeOpenAi

    async with FakeOpenAi() as good:
        dead = "http://127.0.0.1:9"  # nothing listens on the discard port: connect refused, then a retry
        llm = {
            "name": "llm",
            "engine": "openai",
            "model": "m",
            "endpoints": [{"url": dead}, {"url": good.url}],
            "retries": 2,
            "backoff_ms": 1,
            "connect_timeout_s": 1.0,
        }
        config = test_config(telemetry=TRACED)
        config["pipeline"][2] = llm
        async with running_server(config) as srv, Client.connect(srv.url) as c:
            await c.send({"type": "text", "text": "hello there"})
            msgs = await c.turn()
            assert msgs[-1]["type"] == "turn_end"
            spans = trace(srv, root_of(srv, msgs[-1]["turn"]))
    generate = one(spans, "llm.generate")
    attempts = children(spans, generate)
    attempts = [s for s in attempts if s.name == "upstream.request"]
    assert [(attr(s, "endpoint"), attr(s, "attempt"), attr(s, "outcome")) for s in attempts] == [
        (dead, 1, "error"),
        (good.url, 2, "ok"),
    ]
    assert attr(attempts[0], "error") == "upstream_unavailable"
    assert attr(attempts[1], "http_status") == 200
    assert (attr(generate, "upstream_endpoint"), attr(generate, "upstream_retries")) == (good.url, 1)
    assert attr(generate, "engine") == "openai"


# ---------------------------------------------------------------------- log lines


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "voxpipe.events"]


@pytest.mark.parametrize("log_transcripts", [False, True])
async def test_one_json_line_per_session_start_turn_and_end(
    log_transcripts: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voxpipe.events")
    token = "secret-token-0123456789abcdef"
    config = test_config(
        telemetry={**TRACED, "log_transcripts": log_transcripts},
        auth={"mode": "tokens", "tokens": {token: "alice"}},
    )
    async with running_server(config) as srv:
        async with Client.connect(srv.url, hello={"token": token}) as c:
            msgs = await spoken_turn(c)
            await c.send({"type": "text", "text": "tell me more"})
            await c.recv_type("audio")
            await c.send({"type": "interrupt"})
            await c.recv_type("interrupted")
            await c.send({"type": "say", "text": ""})  # an error the turn lines do not own: bad_field
            await c.recv_type("error")
            await c.send({"type": "bye"})
        await wait_until(lambda: any(e["event"] == "session_end" for e in events(caplog)))
    lines = events(caplog)
    assert [e["event"] for e in lines] == ["session_start", "turn", "turn", "session_end"]
    start, spoken, cut, end = lines
    session = c.ready["session"]
    assert all(e["session"] == session and e["user"] == "alice" for e in lines)
    assert start["resumed"] is False
    assert start["audio_in_hz"] == 16000
    metrics = next(m for m in msgs if m["type"] == "metrics")
    assert spoken["outcome"] == "end"
    assert spoken["turn"] == msgs[-1]["turn"]
    assert spoken["voice_to_voice_ms"] == metrics["voice_to_voice_ms"]
    assert spoken["first_output_ms"] == metrics["first_output_ms"]
    assert spoken["audio_out_bytes"] == sum(len(m["data"]) for m in msgs if m["type"] == "audio")
    assert 550 <= spoken["audio_in_ms"] <= 2000  # 600 ms of voice, the pre-roll and the silence up to the end
    assert spoken["trace_id"] == format(root_of(srv, spoken["turn"]).context.trace_id, "032x")
    assert cut["outcome"] == "interrupted"
    assert cut["cause"] == "client"
    assert cut["from_speech"] is False
    assert end["reason"] == "closed 1000"
    assert end["turns"] == {"end": 1, "interrupted": 1}
    assert end["errors"] == {"bad_field": 1}
    assert end["audio_in_bytes"] == len(SPOKEN)
    text = "\n".join(json.dumps(e) for e in lines)
    assert token not in text
    if log_transcripts:
        final = next(m for m in msgs if m["type"] == "transcript" and m["final"])
        assert spoken["transcript"] == final["text"]
        assert spoken["reply"] == "".join(m["text"] for m in msgs if m["type"] == "reply").strip()
        assert cut["transcript"] == "tell me more"
    else:
        assert "heard" not in text
        assert "tell me more" not in text
        assert "You said" not in text


# ---------------------------------------------------------------------- OTLP to a collector


class Collector:
    """An OTLP/HTTP trace receiver on loopback: ``POST /v1/traces`` with protobuf bodies, decoded."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.names: list[str] = []
        self.services: set[str] = set()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for kv in resource_spans.resource.attributes:
                        if kv.key == "service.name":
                            collector.services.add(kv.value.string_value)
                    for scope in resource_spans.scope_spans:
                        collector.names += [span.name for span in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_spans_reach_an_otlp_collector_configured_by_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the OTLP exporter is not installed")
    with Collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "voxpipe-test")
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        async with running_server(test_config(telemetry={"traces": True})) as srv, Client.connect(srv.url) as c:
            assert srv.tracer.enabled
            await c.send({"type": "text", "text": "hello"})
            assert (await c.turn())[-1]["type"] == "turn_end"
        # the server's exit flushed the batch: everything is there, with no waiting
    assert collector.services == {"voxpipe-test"}
    assert {"turn", "llm.generate", "llm.first_token", "tts.clause", "audio.first_sent", "turn.end"} <= set(
        collector.names
    )


async def test_otel_sdk_disabled_wins_over_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    async with running_server(test_config(telemetry=TRACED)) as srv:
        assert srv.tracer.enabled is False
