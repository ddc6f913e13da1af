"""Sans-I/O codec of wire contract v1: frames in, validated messages out, and back.

Binary frames carry msgpack maps, text frames JSON objects (``bytes`` fields as base64).
``decode`` raises only ``ProtocolError`` (codes ``bad_frame``, ``bad_message``, ``unknown_type``,
``bad_field``), whatever the input; nothing here touches a socket or an event loop.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import msgpack

from transports.messages import CLIENT_MESSAGES, SERVER_MESSAGES, Sequenced
from vocab.errors import ProtocolError

Frame = bytes | str
Checker = Callable[[Any, "Framing"], Any]

# Python attribute name -> wire name, where the contract's name is a Python keyword.
WIRE_NAMES = {"input": "in", "output": "out"}
# Integers on the wire are signed 64-bit in both codecs, in and out: msgpack cannot carry more (nor its
# uint64 range into a signed reader), and a JSON integer of 400 digits is no number any client can use.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class Framing(Enum):
    MSGPACK = "msgpack"  # binary frames
    JSON = "json"  # text frames


def framing_of(frame: Frame) -> Framing:
    return Framing.JSON if isinstance(frame, str) else Framing.MSGPACK


class _FieldError(Exception):
    """Internal: a field failed validation; turned into ProtocolError('bad_field') with its path."""


# ---------------------------------------------------------------- field checkers


def _in_int_range(value: int) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise _FieldError("must be a signed 64-bit integer")
    return value


def _check_int(value: Any, _: Framing) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError("must be an integer")
    return _in_int_range(value)


def _check_float(value: Any, _: Framing) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError("must be a number")
    if isinstance(value, int):
        return float(_in_int_range(value))  # before float(): a huge int overflows it
    if not math.isfinite(value):
        raise _FieldError("must be a finite number")
    return value


def _check_str(value: Any, _: Framing) -> str:
    if not isinstance(value, str):
        raise _FieldError("must be a string")
    return value


def _check_bool(value: Any, _: Framing) -> bool:
    if not isinstance(value, bool):
        raise _FieldError("must be a boolean")
    return value


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _FieldError("must be base64") from exc


def _check_bytes(value: Any, framing: Framing) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and framing is Framing.JSON:
        return _b64decode(value)
    raise _FieldError("must be bytes (msgpack bin, or base64 in JSON)")


def _check_any(value: Any, _: Framing) -> Any:
    if isinstance(value, dict | list | msgpack.Timestamp):
        raise _FieldError("must be a scalar")
    if isinstance(value, float) and not math.isfinite(value):
        raise _FieldError("must be a finite number")  # echoed values must encode in JSON too
    if isinstance(value, int) and not isinstance(value, bool):
        return _in_int_range(value)  # echoed values must encode in msgpack too
    return value


def _literal_checker(allowed: tuple[Any, ...]) -> Checker:
    def check(value: Any, _: Framing) -> Any:
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise _FieldError(f"must be one of {', '.join(map(repr, allowed))}")
        return value

    return check


def _list_checker(item: Checker) -> Checker:
    def check(value: Any, framing: Framing) -> list[Any]:
        if not isinstance(value, list):
            raise _FieldError("must be a list")
        return [item(v, framing) for v in value]

    return check


def _union_checker(options: list[Checker]) -> Checker:
    def check(value: Any, framing: Framing) -> Any:
        reasons = []
        for option in options:
            try:
                return option(value, framing)
            except _FieldError as exc:
                reasons.append(str(exc))
        raise _FieldError(" or ".join(reasons))

    return check


def _dict_checker(item: Checker) -> Checker:
    def check(value: Any, framing: Framing) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _FieldError("must be a map")
        return {str(k): item(v, framing) for k, v in value.items()}

    return check


def _bytes_or_str(value: Any, _: Framing) -> bytes | str:
    # Input.data: the target stage decides between audio (bin/base64) and text.
    if not isinstance(value, bytes | str):
        raise _FieldError("must be bytes or a string")
    return value


def _checker_for(hint: Any) -> Checker:
    origin = get_origin(hint)
    if hint is int:
        return _check_int
    if hint is float:
        return _check_float
    if hint is str:
        return _check_str
    if hint is bool:
        return _check_bool
    if hint is bytes:
        return _check_bytes
    if hint is Any:
        return _check_any
    if origin is Literal:
        return _literal_checker(get_args(hint))
    if origin is list:
        return _list_checker(_checker_for(get_args(hint)[0]))
    if origin is dict:
        return _dict_checker(_checker_for(get_args(hint)[1]))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if set(args) == {bytes, str}:
            return _bytes_or_str
        checkers = [_checker_for(a) for a in args]
        return checkers[0] if len(checkers) == 1 else _union_checker(checkers)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        spec = _spec(hint)
        return lambda value, framing: _build(spec, value, framing)
    raise TypeError(f"no wire checker for {hint!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    wire_name: str
    check: Checker
    required: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    cls: type[Any]
    fields: tuple[_FieldSpec, ...]
    wire_names: frozenset[str]


_SPECS: dict[type[Any], _Spec] = {}


def _spec(cls: type[Any]) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            hint = hints[f.name]
            optional = type(None) in get_args(hint)
            specs.append(_FieldSpec(f.name, WIRE_NAMES.get(f.name, f.name), _checker_for(hint), required))
            if optional and required:
                raise TypeError(f"{cls.__name__}.{f.name}: optional fields need a default")
        spec = _Spec(cls, tuple(specs), frozenset(s.wire_name for s in specs) | {"type"})
        _SPECS[cls] = spec
    return spec


def _build(spec: _Spec, data: Any, framing: Framing) -> Any:
    if not isinstance(data, dict):
        raise _FieldError("must be a map")
    kwargs = {}
    for f in spec.fields:
        if f.wire_name in data and data[f.wire_name] is not None:
            try:
                kwargs[f.name] = f.check(data[f.wire_name], framing)
            except _FieldError as exc:
                raise _FieldError(f"{f.wire_name}: {exc}") from None
        elif f.required:
            raise _FieldError(f"{f.wire_name}: missing")
    return spec.cls(**kwargs)


_CLIENT_TYPES: dict[str, _Spec] = {cls.type: _spec(cls) for cls in CLIENT_MESSAGES}


# ---------------------------------------------------------------- decode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not accepted")


# A JSON escape of a UTF-16 surrogate (\\ud800-\\udfff); paired ones decode fine, lone ones cannot be
# encoded back to UTF-8 (an echo or a reply containing one would fail on the way out).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(obj: Any) -> None:
    """Raise ``UnicodeEncodeError`` when a string (or key) in ``obj`` holds a lone surrogate."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_frame(frame: Frame) -> dict[str, Any]:
    """Decode one frame into its top-level map, or raise ``ProtocolError('bad_frame'|'bad_message')``."""
    try:
        if isinstance(frame, str):
            obj = json.loads(frame, parse_constant=_reject_constant)
            if _SURROGATE_ESCAPE.search(frame):
                _check_unicode(obj)
        else:
            obj = msgpack.unpackb(
                frame, raw=False, strict_map_key=True, ext_hook=_reject_ext, timestamp=0, use_list=True
            )
    except RecursionError:
        raise ProtocolError("bad_frame", "frame nests too deeply") from None
    except Exception as exc:  # any decoder failure is the client's bad frame
        kind = "JSON" if isinstance(frame, str) else "msgpack"
        raise ProtocolError("bad_frame", f"cannot decode {kind}: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"a message must be a map, not {type(obj).__name__}")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("bad_message", "a message needs a string 'type'")
    return obj


def decode(frame: Frame) -> Any:
    """Decode a client frame into one of ``CLIENT_MESSAGES``; raises only ``ProtocolError``."""
    obj = parse_frame(frame)
    spec = _CLIENT_TYPES.get(obj["type"])
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {obj['type'][:40]!r}")
    try:
        return _build(spec, obj, framing_of(frame))
    except _FieldError as exc:
        raise ProtocolError("bad_field", f"{obj['type']}.{exc}") from None


# ---------------------------------------------------------------- encode


def _to_plain(value: Any, framing: Framing) -> Any:
    if type(value) is int:
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError("an integer outside the wire's signed 64-bit range")
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _as_map(value, framing)
    if isinstance(value, bytes) and framing is Framing.JSON:
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_to_plain(v, framing) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v, framing) for k, v in value.items()}
    return value


def _as_map(message: Any, framing: Framing) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = getattr(type(message), "type", None)
    if isinstance(kind, str):
        out["type"] = kind
    for f in _spec(type(message)).fields:
        value = getattr(message, f.name)
        if value is not None:
            out[f.wire_name] = _to_plain(value, framing)
    return out


def to_map(message: Any) -> dict[str, Any]:
    """A message as the plain map that goes on the wire, bytes kept as bytes (as msgpack carries them)."""
    return _as_map(message, Framing.MSGPACK)


def encode(message: Any, framing: Framing) -> Frame:
    """Encode any message (client or server, or a ``Sequenced`` one) into a frame of the given framing."""
    if type(message) is Sequenced:
        inner = message.message
        data = dict(inner) if isinstance(inner, dict) else _as_map(inner, framing)
        data["session_seq"] = message.seq
        if isinstance(inner, dict) and framing is Framing.JSON:
            data = {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for k, v in data.items()}
    else:
        data = _as_map(message, framing)
    if framing is Framing.JSON:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return msgpack.packb(data, use_bin_type=True)


def encode_map(data: dict[str, Any], framing: Framing) -> Frame:
    """Encode a plain map (tests and clients build messages this way too)."""
    if framing is Framing.JSON:
        plain = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in data.items()}
        return json.dumps(plain, separators=(",", ":"), allow_nan=False)
    return msgpack.packb(data, use_bin_type=True)


def decode_server(frame: Frame) -> dict[str, Any]:
    """Decode a server frame into a plain map with bytes restored (for clients and tests)."""
    obj = parse_frame(frame)
    if isinstance(frame, str) and obj.get("type") == "audio" and isinstance(obj.get("data"), str):
        obj["data"] = base64.b64decode(obj["data"])
    return obj


def server_message_types() -> list[str]:
    return [cls.type for cls in SERVER_MESSAGES]
