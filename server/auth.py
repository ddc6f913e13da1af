"""Who may connect (config section ``auth``): HS256 JWTs or a static token list, and allowed Origins.

A token comes in the handshake (``Authorization: Bearer``, or ``?token=`` for browsers, which cannot
set headers on a WebSocket, or the ``openai-insecure-api-key.<token>`` subprotocol of OpenAI Realtime
browser clients) or in ``hello.token``. A JWT's subject (``sub``) is the user id used for
the per-user session cap; a static token maps to the user id given in the config.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import jwt
from websockets.datastructures import Headers
from websockets.frames import CloseCode

from vocab.errors import ConfigError, ProtocolError
from vocab.options import require

MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash


@dataclass(frozen=True, slots=True)
class AuthOptions:
    mode: Literal["none", "jwt", "tokens"] = "none"
    # jwt: the HS256 secret, from the environment variable named here (preferred) or inline
    secret_env: str | None = "VOXPIPE_JWT_SECRET"
    secret: str | None = None
    issuer: str | None = None  # required "iss" when set
    audience: str | None = None  # required "aud" when set
    leeway_s: float = 30.0  # clock skew allowed on exp/nbf
    # tokens: static token -> user id (simple setups; keep this file private)
    tokens: dict[str, str] = field(default_factory=dict)
    # both modes: a token must come with the handshake (HTTP 401 otherwise), not only in hello
    require_at_handshake: bool = False
    # browser Origins allowed to connect (HTTP 403 otherwise); null: the server's own page only (an Origin
    # whose host and port are the request's Host); ["*"]: any. Non-browser clients send none.
    allowed_origins: list[str] | None = None
    allow_missing_origin: bool = True

    def validate(self) -> None:
        require(self.leeway_s >= 0, "leeway_s", "must be >= 0")
        if self.mode == "tokens":
            require(bool(self.tokens), "tokens", "mode 'tokens' needs at least one token")
            short = [user for token, user in self.tokens.items() if len(token) < 16]
            require(not short, "tokens", f"the token of {short[:1]} is shorter than 16 characters")
        if self.allowed_origins is not None:
            bad = [o for o in self.allowed_origins if o != "*" and (o.endswith("/") or "://" not in o)]
            require(not bad, "allowed_origins", f"{bad[:1]}: an origin is scheme://host[:port], no path")


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None  # None when auth is off
    expires_at: float | None = None  # wall-clock time (epoch s) the credential ends: a JWT's exp + leeway_s


ANONYMOUS = Identity(None)


def unauthorized(message: str) -> ProtocolError:
    return ProtocolError("unauthorized", message, fatal=True, close_code=CloseCode.POLICY_VIOLATION)


class Authenticator:
    """Checks tokens; ``verify`` raises ``ProtocolError('unauthorized')`` (fatal, close 1008)."""

    def __init__(self, options: AuthOptions, environ: dict[str, str] | None = None) -> None:
        self.options = options
        self.secret = b""
        if options.mode == "jwt":
            self.secret = resolve_secret(options, os.environ if environ is None else environ)

    @property
    def enabled(self) -> bool:
        return self.options.mode != "none"

    def verify(self, token: str | None) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise unauthorized("a token is required (Authorization: Bearer, ?token= or hello.token)")
        if self.options.mode == "tokens":
            return self._static(token)
        return self._jwt(token)

    def _static(self, token: str) -> Identity:
        found = None
        given = token.encode()
        for known, user in self.options.tokens.items():  # compare all, in constant time each
            if hmac.compare_digest(given, known.encode()):
                found = user
        if found is None:
            raise unauthorized("unknown token")
        return Identity(found)

    def _jwt(self, token: str) -> Identity:
        opts = self.options
        required = ["exp", "sub"] + (["iss"] if opts.issuer else []) + (["aud"] if opts.audience else [])
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=opts.issuer,
                audience=opts.audience,
                leeway=opts.leeway_s,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise unauthorized("invalid token: 'sub' must be a non-empty string")
        return Identity(subject, expires_at=float(claims["exp"]) + opts.leeway_s)  # pyjwt checked exp is a number


def resolve_secret(options: AuthOptions, environ: Any) -> bytes:
    """The HS256 key from ``secret_env`` (preferred) or ``secret``; ConfigError when missing or short."""
    value = environ.get(options.secret_env) if options.secret_env else None
    where = f"environment variable {options.secret_env}"
    if not value:
        value, where = options.secret, "auth.secret"
    if not value:
        raise ConfigError(f"auth: mode 'jwt' needs a secret in ${options.secret_env} or auth.secret")
    secret = value.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"auth: the secret in {where} must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def origin_allowed(origin: str | None, host: str | None, options: AuthOptions) -> bool:
    """The browser ``Origin`` check of the WebSocket handshake (cross-site WebSocket hijacking)."""
    if origin is None:
        return options.allow_missing_origin  # not a browser
    allowed = options.allowed_origins
    if allowed is not None:
        return "*" in allowed or origin in allowed
    return host is not None and same_host(origin, host)


def same_host(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://name[:port]``) is the page of the server the request's ``Host`` names."""
    try:
        page = urlsplit(origin)
        target = urlsplit("//" + host)
        page_port, target_port = page.port, target.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(page.scheme)
    if default is None or not page.hostname or page.hostname != target.hostname:
        return False
    return (page_port or default) == (target_port or default)


# Browsers cannot set headers on a WebSocket: OpenAI Realtime clients put the key in a subprotocol.
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


def token_from_request(path: str, headers: Headers) -> str | None:
    """``Authorization: Bearer <t>`` first, then the ``openai-insecure-api-key.<t>`` subprotocol, then the
    ``token`` query parameter."""
    for value in headers.get_all("Authorization"):
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        for offered in value.split(","):
            offered = offered.strip()
            if offered.startswith(KEY_SUBPROTOCOL_PREFIX) and len(offered) > len(KEY_SUBPROTOCOL_PREFIX):
                return offered[len(KEY_SUBPROTOCOL_PREFIX) :]
    query = parse_qs(urlsplit(path).query)
    tokens = query.get("token")
    return tokens[0] if tokens else None


def issue_token(
    secret: bytes, user: str, *, ttl_s: float, issuer: str | None = None, audience: str | None = None
) -> str:
    """An HS256 JWT for ``user`` valid ``ttl_s`` seconds (``voxpipe token`` prints one)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
