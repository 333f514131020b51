"""AMF values that have no exact Python counterpart (shared by both AMF0 twins)."""

from dataclasses import dataclass

from .sentinel import Sentinel


class EcmaArray(dict):
    """An AMF0 ECMA array (associative array): what onMetaData carries."""

    __slots__ = ()


UNDEFINED = Sentinel("UNDEFINED")  # AMF0 undefined (marker 0x06)


@dataclass(frozen=True, slots=True)
class AmfDate:
    ms: float  # milliseconds since the epoch, UTC
    tz: int = 0  # minutes offset; reserved, senders write 0
