"""The "need more data" sentinel shared by every incremental parser (never an exception)."""


class _NeedData:
    __slots__ = ()
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        return "NEED_DATA"


NEED_DATA = _NeedData()
