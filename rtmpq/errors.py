"""One tree of errors for the whole project.

RtmpqError
 +-- ProtocolError (also a ValueError)
 |    +-- RemoteProtocolError   the peer sent bytes we refuse: close that peer, nothing else
 |    +-- LocalProtocolError    we misused a protocol object (a bug on our side)
 +-- LimitExceeded (RemoteProtocolError)  a named limit was hit; .limit names the setting
 +-- StreamNameInUse        a publish for a broadcast that is already live
"""


class RtmpqError(Exception):
    """Base class of every error rtmpq raises on purpose."""


class ProtocolError(RtmpqError, ValueError):
    """Bytes or calls that break a protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection to that peer should be closed."""


class LocalProtocolError(ProtocolError):
    """This side broke the protocol (misuse of a sans-I/O object)."""


class LimitExceeded(RemoteProtocolError):
    """The peer pushed past a named limit (see rtmpq.limits)."""

    def __init__(self, limit: str, value: int, maximum: int) -> None:
        super().__init__(f"{limit} exceeded: {value} > {maximum}")
        self.limit = limit
        self.value = value
        self.maximum = maximum


class StreamNameInUse(RtmpqError):
    """A broadcast with this name is already being published."""


# the settings of each listener, named in its bind error (what an operator changes)
LISTENER_SETTINGS = {"RTMP": "[rtmp] host/port, --rtmp", "RTMPS": "[rtmp] tls_host/tls_port, --rtmps",
                     "HTTP": "[http] host/port, --http", "MoQ (udp)": "[moq] host/port, --moq"}


def listener_error(exc: OSError, what: str, host: str, port: int) -> OSError:
    """``exc`` from binding a listener, saying which one (a bare errno names no address) and the
    setting that moves it."""
    return OSError(exc.errno, f"{what} listener on {host}:{port}: {exc.strerror or exc} "
                              f"({LISTENER_SETTINGS.get(what, 'its setting')})")
