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


class StageError(VoxpipeError):
    """A stage could not process an item; the turn ends with an ``error``, the session stays usable."""

    code = "stage_failed"


class UpstreamError(StageError):
    """A model service failed. Codes: ``upstream_unavailable``, ``upstream_timeout``,
    ``upstream_busy``, ``upstream_bad_response``."""

    code = "upstream_unavailable"
