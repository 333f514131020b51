"""AMF values that have no exact Python counterpart (shared by both AMF0 twins)."""

from dataclasses import dataclass


class EcmaArray(dict):
    """An AMF0 ECMA array (associative array): what onMetaData carries."""

    __slots__ = ()


class _Undefined:
    __slots__ = ()
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        return "UNDEFINED"


UNDEFINED = _Undefined()


@dataclass(frozen=True, slots=True)
class AmfDate:
    ms: float  # milliseconds since the epoch, UTC
    tz: int = 0  # minutes offset; reserved, senders write 0
