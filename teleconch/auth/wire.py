"""How a typed command travels as an AMP box.

A command is ``class Name(AuthCommand[Request, Response])`` with two frozen
attrs classes; its AMP ``arguments`` and ``response`` are derived from their
fields, so the wire format follows the types:

=========================  ==========================================
field type                 AMP argument
=========================  ==========================================
``str`` ``int`` ``bool``   ``Unicode`` ``Integer`` ``Boolean``
``float`` ``bytes``        ``Float`` ``String``
``X | None``               the same, ``optional=True``
``tuple[str, ...]``        ``ListOf(Unicode())`` (``bytes``: ``String``)
a record, ``tuple`` of     ``JSON``, through the record's ``to_json`` /
records, a ``Mapping``     ``from_json`` (a mapping is a JSON object)
=========================  ==========================================

A record's ``from_json`` may raise an ``AuthAPIError``: the caller gets it
as it is, like any refusal.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import attrs
from twisted.protocols import amp

from teleconch.auth.errors import ERRORS
from teleconch.pki import ROLE_ADMIN

#: The largest box the auth service accepts from a cluster identity (the
#: guard's default).  Its biggest commands (UpsertRole, UpsertNode,
#: EmitAuditEvent) carry one JSON argument of at most ARGUMENT_CHUNKS chunks.
MAX_COMMAND_BYTES = 1 << 20


class JSON(amp.Argument):
    """A JSON value spread over as many AMP keys as it needs.

    One AMP value holds at most 64 KiB; listings (users, events) can be
    longer, so the encoded text is cut into numbered chunks, at most
    ``max_chunks`` of them: few for a command's argument (the box it travels
    in is bounded), more for a response.  With ``object_only`` the value must
    be a JSON object.
    """

    CHUNK = 0xFF00

    def __init__(
        self, optional: bool = False, max_chunks: int = 4096, object_only: bool = False
    ) -> None:
        super().__init__(optional)
        self.max_chunks = max_chunks
        self.object_only = object_only

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        obj = self.retrieve(objects, name.decode("ascii"), proto)
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
        chunks = [data[i : i + self.CHUNK] for i in range(0, len(data), self.CHUNK)]
        if len(chunks) > self.max_chunks:
            raise ValueError(
                f"{name.decode('ascii')} is too large: {len(data)} bytes of JSON, "
                f"at most {self.max_chunks * self.CHUNK} fit"
            )
        strings[name] = str(len(chunks)).encode("ascii")
        for i, chunk in enumerate(chunks):
            strings[b"%s.%d" % (name, i)] = chunk

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        count = int(strings.pop(name))
        if not 0 < count <= self.max_chunks:
            raise ValueError(f"bad chunk count for {name!r}")
        data = b"".join(strings.pop(b"%s.%d" % (name, i)) for i in range(count))
        value = json.loads(data)
        if self.object_only and not isinstance(value, dict):
            raise ValueError(f"{name!r} is not a JSON object")
        objects[name.decode("ascii")] = value


#: The chunks of a JSON argument of a command: all of them, with room for the
#: command's other arguments, fit in MAX_COMMAND_BYTES.
ARGUMENT_CHUNKS = MAX_COMMAND_BYTES // JSON.CHUNK - 1


@attrs.frozen
class Codec:
    """A typed value to and from its JSON form."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


class TypedJSON(JSON):
    """A JSON argument whose value is a typed one, through its codec."""

    def __init__(self, codec: Codec, **kw: Any) -> None:
        super().__init__(**kw)
        self.codec = codec

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        key = name.decode("ascii")
        if objects.get(key) is not None:
            objects[key] = self.codec.encode(objects[key])
        super().toBox(name, strings, objects, proto)

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        objects[key] = self.codec.decode(objects[key])


_SCALARS: dict[Any, Callable[[bool], amp.Argument]] = {
    str: lambda optional: amp.Unicode(optional=optional),
    int: lambda optional: amp.Integer(optional=optional),
    bool: lambda optional: amp.Boolean(optional=optional),
    float: lambda optional: amp.Float(optional=optional),
    bytes: lambda optional: amp.String(optional=optional),
}


def _codec(tp: Any) -> Codec:
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = _codec(typing.get_args(tp)[0])
        return Codec(
            lambda v: [item.encode(x) for x in v],
            lambda v: tuple(item.decode(x) for x in _list(v)),
        )
    if origin is Mapping or tp is Mapping:
        args = typing.get_args(tp)
        if args == (str, str):
            return Codec(dict, lambda v: {str(k): str(x) for k, x in _map(v).items()})
        return Codec(dict, lambda v: dict(_map(v)))
    if hasattr(tp, "from_json") and hasattr(tp, "to_json"):
        return Codec(lambda v: v.to_json(), tp.from_json)
    raise TypeError(f"no JSON codec for {tp!r}")


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("not a JSON list")
    return value


def _map(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _argument(tp: Any, request: bool) -> amp.Argument:
    optional = False
    if isinstance(tp, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, (tp,) = True, args
    if tp in _SCALARS:
        return _SCALARS[tp](optional)
    if typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in (str, bytes):
        element = _SCALARS[typing.get_args(tp)[0]](False)
        return amp.ListOf(element, optional=optional)
    if request:  # an object, in a box of bounded size
        return TypedJSON(
            _codec(tp), optional=optional, max_chunks=ARGUMENT_CHUNKS, object_only=True
        )
    return TypedJSON(_codec(tp), optional=optional)


def amp_arguments(record: type[Any], request: bool) -> list[tuple[bytes, amp.Argument]]:
    """The AMP arguments of a request or response record, field by field."""
    hints = typing.get_type_hints(record)
    return [
        (f.name.encode("ascii"), _argument(hints[f.name], request))
        for f in attrs.fields(record)
    ]


@attrs.frozen
class Empty:
    """No arguments, or no answer but success."""


Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AuthCommand(amp.Command, Generic[Req, Resp]):
    """A command of the Auth API: ``AuthCommand[Request, Response]``.

    ``roles`` says who may send it; ``arguments`` and ``response`` come
    from the two record types.
    """

    roles: ClassVar[frozenset[str]] = frozenset({ROLE_ADMIN})
    errors: ClassVar[dict[type[Exception], bytes]] = ERRORS
    requiresAnswer = True
    request_type: ClassVar[type[Any]] = Empty
    response_type: ClassVar[type[Any]] = Empty

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is AuthCommand:
                cls.request_type, cls.response_type = typing.get_args(base)
        cls.arguments = amp_arguments(cls.request_type, request=True)
        cls.response = amp_arguments(cls.response_type, request=False)

    @classmethod
    def objects(cls, record: Any) -> dict[str, Any]:
        """A request or response record as the objects AMP encodes."""
        return {f.name: getattr(record, f.name) for f in attrs.fields(type(record))}

    @classmethod
    def decode_request(cls, objects: Mapping[str, Any]) -> Req:
        request: Req = cls.request_type(**_tuples(cls.request_type, objects))
        return request

    @classmethod
    def decode_response(cls, objects: Mapping[str, Any]) -> Resp:
        response: Resp = cls.response_type(**_tuples(cls.response_type, objects))
        return response


def _tuples(record: type[Any], objects: Mapping[str, Any]) -> dict[str, Any]:
    """The record's fields from AMP's objects, its lists as tuples."""
    return {
        f.name: tuple(v) if isinstance(v := objects.get(f.name), list) else v
        for f in attrs.fields(record)
    }
