"""Named sentinel values: "need more data" for every incremental parser (never an exception)."""


class Sentinel:
    """A unique, falsy marker compared with ``is``; one module-level instance per meaning."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __bool__(self) -> bool:
        return False


NEED_DATA = Sentinel("NEED_DATA")
