"""AMF0 encode/decode (pure-Python reference of ext/amf0.pxi), with AMF3 values behind marker 0x11.

Hostile input (specs/bad-inputs.md): nesting is capped (``AMF_MAX_DEPTH``), so are the values in
one message (``AMF_MAX_NODES``); every length is checked against the bytes left before anything is
read or allocated, nothing is preallocated by a declared count, and every loop consumes input.
Errors are RemoteProtocolError("AMF0 ...").
"""

import struct

from ..errors import LocalProtocolError, RemoteProtocolError
from .amf_types import UNDEFINED, AmfDate, EcmaArray

# amf0_decode has a compiled twin; amf0_encode (replies, a few per connection) stays Python.
__all__ = ["amf0_decode"]

# Deepest nesting of objects/arrays accepted (ZLMediaKit fixed a pre-auth DoS with 64).
AMF_MAX_DEPTH = 64
# Most values (of any kind, nested included) one message may hold.
AMF_MAX_NODES = 65536

_NUMBER, _BOOLEAN, _STRING, _OBJECT, _MOVIECLIP, _NULL, _UNDEFINED, _REFERENCE = range(8)
_ECMA_ARRAY, _OBJECT_END, _STRICT_ARRAY, _DATE, _LONG_STRING, _UNSUPPORTED = 8, 9, 10, 11, 12, 13
_XML_DOCUMENT, _TYPED_OBJECT, _AVMPLUS = 15, 16, 17

_pack_double = struct.Struct(">d").pack
_unpack_double = struct.Struct(">d").unpack_from


def _err(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"AMF0 {what}")


class _Decoder:
    __slots__ = ("data", "pos", "end", "nodes", "max_depth", "max_nodes", "amf3_strings")

    def __init__(self, data, max_depth: int, max_nodes: int) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.nodes = 0
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.amf3_strings: list[str] = []

    def need(self, n: int) -> int:
        pos = self.pos
        if self.end - pos < n:
            raise _err(f"truncated: need {n} bytes at offset {pos}, {self.end - pos} left")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.data[self.need(1)]

    def u16(self) -> int:
        p = self.need(2)
        d = self.data
        return (d[p] << 8) | d[p + 1]

    def u32(self) -> int:
        p = self.need(4)
        d = self.data
        return (d[p] << 24) | (d[p + 1] << 16) | (d[p + 2] << 8) | d[p + 3]

    def text(self, n: int) -> str:
        p = self.need(n)
        try:
            return bytes(self.data[p : p + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _err(f"string at offset {p} is not UTF-8") from None

    def value(self, depth: int):
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise _err(f"message holds more than {self.max_nodes} values")
        marker = self.u8()
        if marker == _NUMBER:
            return _unpack_double(self.data, self.need(8))[0]
        if marker == _BOOLEAN:
            return self.u8() != 0
        if marker == _STRING:
            return self.text(self.u16())
        if marker == _LONG_STRING:
            return self.text(self.u32())
        if marker == _NULL:
            return None
        if marker == _UNDEFINED or marker == _UNSUPPORTED:
            return UNDEFINED
        if marker == _OBJECT:
            return self.properties({}, depth + 1)
        if marker == _ECMA_ARRAY:
            self.need(4)  # the count is a hint only: the object-end marker ends the array
            return self.properties(EcmaArray(), depth + 1)
        if marker == _TYPED_OBJECT:
            self.text(self.u16())  # class name, dropped
            return self.properties({}, depth + 1)
        if marker == _STRICT_ARRAY:
            count = self.u32()
            if count > self.end - self.pos:  # every element takes at least one byte
                raise _err(f"strict array of {count} elements in {self.end - self.pos} bytes")
            if depth + 1 > self.max_depth:
                raise _err(f"nesting deeper than {self.max_depth}")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == _DATE:
            ms = _unpack_double(self.data, self.need(8))[0]
            tz = self.u16()
            return AmfDate(ms, tz - 0x10000 if tz & 0x8000 else tz)
        if marker == _XML_DOCUMENT:
            return self.text(self.u32())
        if marker == _AVMPLUS:
            return self.amf3_value(depth + 1)
        if marker == _OBJECT_END:
            raise _err(f"unexpected object end at offset {self.pos - 1}")
        raise _err(f"unsupported marker {marker:#x} at offset {self.pos - 1}")

    def properties(self, out: dict, depth: int) -> dict:
        if depth > self.max_depth:
            raise _err(f"nesting deeper than {self.max_depth}")
        while True:
            key = self.text(self.u16())
            if not key and self.end - self.pos >= 1 and self.data[self.pos] == _OBJECT_END:
                self.pos += 1
                return out
            out[key] = self.value(depth)

    # -- AMF3 (enough for commands and metadata some encoders send) ----------------------------
    def u29(self) -> int:
        value = 0
        for i in range(4):
            b = self.u8()
            if i == 3:
                return (value << 8) | b
            value = (value << 7) | (b & 0x7F)
            if not b & 0x80:
                return value
        return value

    def amf3_string(self) -> str:
        ref = self.u29()
        if not ref & 1:
            index = ref >> 1
            if index >= len(self.amf3_strings):
                raise _err(f"AMF3 string reference {index} out of range")
            return self.amf3_strings[index]
        s = self.text(ref >> 1)
        if s:
            self.amf3_strings.append(s)
        return s

    def amf3_value(self, depth: int):
        if depth > self.max_depth:
            raise _err(f"nesting deeper than {self.max_depth}")
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise _err(f"message holds more than {self.max_nodes} values")
        marker = self.u8()
        if marker == 0:
            return UNDEFINED
        if marker == 1:
            return None
        if marker == 2:
            return False
        if marker == 3:
            return True
        if marker == 4:
            v = self.u29()
            return float(v - (1 << 29) if v & (1 << 28) else v)
        if marker == 5:
            return _unpack_double(self.data, self.need(8))[0]
        if marker == 6:
            return self.amf3_string()
        if marker == 9:
            ref = self.u29()
            if not ref & 1:
                raise _err("AMF3 object references are not supported")
            count = ref >> 1
            if count > self.end - self.pos:
                raise _err(f"AMF3 array of {count} elements in {self.end - self.pos} bytes")
            assoc = EcmaArray()
            while key := self.amf3_string():
                assoc[key] = self.amf3_value(depth + 1)
            dense = [self.amf3_value(depth + 1) for _ in range(count)]
            if not assoc:
                return dense
            assoc.update(enumerate(dense))
            return assoc
        if marker == 10:
            traits = self.u29()
            # inline object, inline traits, not externalizable, dynamic, no sealed members
            if traits != 0x0B:
                raise _err("AMF3 objects other than anonymous dynamic ones are not supported")
            if self.amf3_string():
                raise _err("AMF3 typed objects are not supported")
            out = {}
            while key := self.amf3_string():
                out[key] = self.amf3_value(depth + 1)
            return out
        raise _err(f"unsupported AMF3 marker {marker:#x}")


def amf0_decode(data, *, max_depth: int = AMF_MAX_DEPTH, max_nodes: int = AMF_MAX_NODES) -> list:
    """Every AMF0 value in ``data``, in order."""
    d = _Decoder(memoryview(data).cast("B") if not isinstance(data, bytes) else data, max_depth, max_nodes)
    out = []
    while d.pos < d.end:
        out.append(d.value(0))
    return out


def _encode_value(v, out: bytearray, depth: int) -> None:
    if depth > AMF_MAX_DEPTH:
        raise LocalProtocolError(f"AMF0: value nested deeper than {AMF_MAX_DEPTH}")
    if v is None:
        out.append(_NULL)
    elif v is UNDEFINED:
        out.append(_UNDEFINED)
    elif v is True or v is False:
        out += bytes((_BOOLEAN, 1 if v else 0))
    elif isinstance(v, (int, float)):
        out.append(_NUMBER)
        out += _pack_double(float(v))
    elif isinstance(v, str):
        b = v.encode("utf-8")
        if len(b) > 0xFFFF:
            out.append(_LONG_STRING)
            out += len(b).to_bytes(4, "big")
        else:
            out.append(_STRING)
            out += len(b).to_bytes(2, "big")
        out += b
    elif isinstance(v, EcmaArray):
        out.append(_ECMA_ARRAY)
        out += len(v).to_bytes(4, "big")
        _encode_properties(v, out, depth)
    elif isinstance(v, dict):
        out.append(_OBJECT)
        _encode_properties(v, out, depth)
    elif isinstance(v, (list, tuple)):
        out.append(_STRICT_ARRAY)
        out += len(v).to_bytes(4, "big")
        for item in v:
            _encode_value(item, out, depth + 1)
    elif isinstance(v, AmfDate):
        out.append(_DATE)
        out += _pack_double(v.ms)
        out += (v.tz & 0xFFFF).to_bytes(2, "big")
    else:
        raise LocalProtocolError(f"AMF0 cannot encode {type(v).__name__}")


def _encode_properties(obj: dict, out: bytearray, depth: int) -> None:
    for key, value in obj.items():
        if not isinstance(key, str):
            raise LocalProtocolError("AMF0 object keys must be strings")
        k = key.encode("utf-8")
        if len(k) > 0xFFFF:
            raise LocalProtocolError("AMF0 object key longer than 65535 bytes")
        out += len(k).to_bytes(2, "big")
        out += k
        _encode_value(value, out, depth + 1)
    out += b"\x00\x00\x09"


def amf0_encode(*values) -> bytes:
    out = bytearray()
    for v in values:
        _encode_value(v, out, 0)
    return bytes(out)


