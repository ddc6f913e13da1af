"""The one exception tree of voxpipe; every error a client can see carries a stable ``code``.

    VoxpipeError
    ├── ConfigError          bad config.yaml (names the offending key); refuses to start
    ├── ProtocolError(code)  a client frame or message that breaks the wire contract
    └── StageError(code)     a stage failed on one item; the turn ends, the session goes on
        └── UpstreamError(code)  a model service failed (down, timeout, busy, bad response)

Callers catch ``VoxpipeError`` (or a branch); ``code`` is what goes into the ``error`` message.
"""

from __future__ import annotations


class VoxpipeError(Exception):
    """Base of every error raised on purpose by voxpipe."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigError(VoxpipeError):
    """The configuration is invalid; the message names the key (``pipeline[2].engine``)."""

    code = "bad_config"


class ProtocolError(VoxpipeError):
    """A frame or message broke the wire contract.

    ``fatal`` errors end the connection (close code ``close_code``); the others are reported
    to the client with ``fatal: false`` and the conversation goes on.
    """

    code = "bad_message"

    def __init__(self, code: str, message: str, *, fatal: bool = False, close_code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.fatal = fatal
        self.close_code = close_code


# What a client is told for a stage failure, by code. The failure's own message (an endpoint's URL, a socket
# error, the service's error body, an exception's text) is for the server log only: it can carry internal
# addresses and secrets (an API's partly masked key).
PUBLIC_MESSAGES = {
    "upstream_unavailable": "the model service is unavailable",
    "upstream_timeout": "the model service did not answer in time",
    "upstream_busy": "the model service is busy; try again shortly",
    "upstream_bad_response": "the model service sent an answer that could not be used",
    "busy": "the stage is busy; try again shortly",
}
DEFAULT_PUBLIC_MESSAGE = "the stage failed on this input"


class StageError(VoxpipeError):
    """A stage could not process an item; the turn ends with an ``error``, the session stays usable.

    ``message`` is for the server log; ``public_message`` is what the client sees next to ``code``.
    """

    code = "stage_failed"

    @property
    def public_message(self) -> str:
        return PUBLIC_MESSAGES.get(self.code, DEFAULT_PUBLIC_MESSAGE)


class UpstreamError(StageError):
    """A model service failed. Codes: ``upstream_unavailable``, ``upstream_timeout``,
    ``upstream_busy``, ``upstream_bad_response``."""

    code = "upstream_unavailable"
