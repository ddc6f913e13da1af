"""Resume tokens: an opaque, signed, expiring ticket that binds a session id to the user who owns it.

``token = base64url(payload) "." base64url(HMAC-SHA256(secret, payload))``, payload = ``{"s": session,
"u": user, "exp": unix time}``. Every worker that shares the secret (an environment variable named in
config, ``session.resume_secret_env``) accepts the others' tokens; a token names one session and one user,
so it can never open another client's conversation. With no secret set, a process makes its own at start
(resume then works within that process only; ``voxpipe serve --workers N`` shares one with its workers).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping

from vocab.errors import VoxpipeError

MIN_SECRET_BYTES = 32


class ResumeRefused(VoxpipeError):
    """A resume that must not happen; the message says why (for the server log; the client gets a generic one)."""

    code = "resume_failed"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def resume_secret(env_name: str, environ: Mapping[str, str] | None = None) -> tuple[bytes, bool]:
    """The shared secret from ``$env_name`` (True), or a fresh random one for this process (False)."""
    value = (os.environ if environ is None else environ).get(env_name, "")
    if value:
        secret = value.encode()
        if len(secret) < MIN_SECRET_BYTES:
            from vocab.errors import ConfigError

            raise ConfigError(f"session.resume_secret_env: ${env_name} must be at least {MIN_SECRET_BYTES} bytes")
        return secret, True
    return secrets.token_bytes(MIN_SECRET_BYTES), False


class ResumeTokens:
    """Issues and checks resume tokens. ``ttl_s``: how long a token stays good after it was issued."""

    def __init__(self, secret: bytes, *, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self.clock = clock

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def issue(self, session: str, user: str | None) -> str:
        payload = json.dumps({"s": session, "u": user, "exp": int(self.clock() + self.ttl_s)}).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def check(self, token: str, *, session: str, user: str | None) -> None:
        """Raise ``ResumeRefused`` unless ``token`` is ours, unexpired, for ``session``, and owned by ``user``."""
        try:
            payload_text, signature_text = token.split(".", 1)
            payload, signature = _unb64(payload_text), _unb64(signature_text)
        except ValueError:
            raise ResumeRefused("the resume token is malformed") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise ResumeRefused("the resume token's signature does not match")
        try:
            claims = json.loads(payload)
            owner, expires, named = claims["u"], float(claims["exp"]), claims["s"]
        except (ValueError, KeyError, TypeError):
            raise ResumeRefused("the resume token is malformed") from None
        if named != session:
            raise ResumeRefused("the resume token is for another session")
        if owner != user:
            raise ResumeRefused("the resume token belongs to another user")
        if expires < self.clock():
            raise ResumeRefused("the resume token has expired")
