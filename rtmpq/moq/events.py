"""What a MoqSession reports to its application (frozen slotted dataclasses).

Requests carry ``authorization``: the token of the request's AUTHORIZATION TOKEN parameter, or
None when it has none (the session's ``setup_authorization`` holds the one sent in setup). It is
a secret, so it is left out of the events' repr.
"""

from dataclasses import dataclass, field


def _token():
    return field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SetupComplete:
    path: str = ""  # the PATH setup parameter a client sent (server side)


@dataclass(frozen=True, slots=True)
class SubscribeRequested:
    request_id: int
    namespace: tuple[str, ...]
    track_name: str
    filter_type: int | None  # None: unfiltered
    start: tuple[int, int] | None
    delivery_timeout_ms: int | None
    subscriber_priority: int
    authorization: str | None = _token()
    end_group: int | None = None  # an AbsoluteRange filter's End Group (the last group it passes)
    forward: bool = True  # FORWARD=0: no objects until REQUEST_UPDATE sets FORWARD=1
    group_order: int | None = None  # GROUP_ORDER asked (Ascending 0x1, Descending 0x2); None: the publisher's


@dataclass(frozen=True, slots=True)
class SubscribeAccepted:
    request_id: int
    track_alias: int
    largest: tuple[int, int] | None
    extensions: dict = field(default_factory=dict)  # Track Extensions (a relay forwards them)


@dataclass(frozen=True, slots=True)
class RequestFailed:
    request_id: int
    error_code: int
    reason: str
    retry_after: float | None = None  # seconds the peer asks us to wait before asking again; None: do not


@dataclass(frozen=True, slots=True)
class RequestAccepted:
    request_id: int
    params: dict


@dataclass(frozen=True, slots=True)
class NamespacePublished:
    request_id: int
    namespace: tuple[str, ...]
    authorization: str | None = _token()


@dataclass(frozen=True, slots=True)
class NamespaceDone:
    """The peer withdrew the namespace it published with request ``request_id``."""

    request_id: int


@dataclass(frozen=True, slots=True)
class NamespaceCancelled:
    """PUBLISH_NAMESPACE_CANCEL: the peer will send no more SUBSCRIBEs for the namespace we
    published with request ``request_id`` (``error_code``: a REQUEST_ERROR code)."""

    request_id: int
    error_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class NamespaceSubscribeRequested:
    """SUBSCRIBE_NAMESPACE, on its own bidirectional stream ``stream_id`` (answer there)."""

    request_id: int
    prefix: tuple[str, ...]
    stream_id: int
    options: int
    authorization: str | None = _token()
    forward: bool = True  # FORWARD=0: the PUBLISHes it brings carry FORWARD=0


@dataclass(frozen=True, slots=True)
class NamespaceReceived:
    """NAMESPACE on the stream of our SUBSCRIBE_NAMESPACE ``request_id``: ``namespace`` (the
    subscribed prefix followed by ``suffix``; an empty suffix is the prefix itself) is published."""

    request_id: int
    suffix: tuple[str, ...]
    namespace: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NamespaceDoneReceived:
    """NAMESPACE_DONE on the stream of our SUBSCRIBE_NAMESPACE ``request_id``: ``namespace`` is gone."""

    request_id: int
    suffix: tuple[str, ...]
    namespace: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NamespaceSubscriptionEnded:
    """The peer closed the stream of our SUBSCRIBE_NAMESPACE ``request_id``: with FIN (``code``
    None; after a REQUEST_ERROR, or the peer is done) or with a reset."""

    request_id: int
    code: int | None = None


@dataclass(frozen=True, slots=True)
class NamespaceUnsubscribed:
    """The peer closed the stream of a SUBSCRIBE_NAMESPACE."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class TrackStatusRequested:
    request_id: int
    namespace: tuple[str, ...]
    track_name: str
    authorization: str | None = _token()


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    request_id: int


@dataclass(frozen=True, slots=True)
class PublishDoneReceived:
    request_id: int
    status: int
    stream_count: int
    reason: str


@dataclass(frozen=True, slots=True)
class TrackPublished:
    """PUBLISH: the peer pushes a track to us under ``track_alias`` (answer publish_ok/request_error)."""

    request_id: int
    namespace: tuple[str, ...]
    track_name: str
    track_alias: int
    authorization: str | None = _token()
    forward: bool = True  # FORWARD=0: no objects until we send REQUEST_UPDATE with FORWARD=1
    extensions: dict = field(default_factory=dict)  # Track Extensions (a relay forwards them)
    largest: tuple[int, int] | None = None  # its LARGEST_OBJECT parameter (None: no objects published yet)


@dataclass(frozen=True, slots=True)
class PublishAccepted:
    """PUBLISH_OK: the peer took a track we pushed with PUBLISH."""

    request_id: int
    forward: bool | None = None  # its FORWARD parameter (None: absent, the state stays)
    delivery_timeout_ms: int | None = None  # its DELIVERY_TIMEOUT parameter (None: absent)


@dataclass(frozen=True, slots=True)
class ObjectReceived:
    track_alias: int
    group: int
    subgroup: int
    object_id: int
    payload: bytes
    extensions: dict
    status: int = 0
    priority: int | None = None  # the publisher priority of its subgroup header (None: inherited)
    end_of_group: bool = True  # its subgroup header says the subgroup holds the group's last object


@dataclass(frozen=True, slots=True)
class DatagramObjectReceived:
    """An object in an OBJECT_DATAGRAM (Forwarding Preference Datagram: no subgroup, no stream;
    a relay forwards it as a datagram). ``end_of_group``: no object of a larger ID is in its group."""

    track_alias: int
    group: int
    object_id: int
    payload: bytes
    extensions: dict
    status: int = 0
    priority: int | None = None  # its publisher priority (None: the subscription's)
    end_of_group: bool = False


@dataclass(frozen=True, slots=True)
class SubgroupEnded:
    """The publisher closed the subgroup stream with FIN: every object of it arrived."""

    track_alias: int
    group: int
    subgroup: int


@dataclass(frozen=True, slots=True)
class SubgroupReset:
    """The publisher reset the subgroup stream: the rest of this group was skipped (``code`` says why)."""

    track_alias: int
    group: int
    subgroup: int
    code: int


@dataclass(frozen=True, slots=True)
class PartialObjectExpired:
    """An incoming data stream held an incomplete object longer than the timeout: stopped
    (STOP_SENDING) and its bytes let go. ``track_alias``/``group``/``subgroup``: a subgroup stream's
    header (None before it was read); ``request_id``: a fetch stream's. A SubgroupReset or
    FetchEnded follows for what the stream carried."""

    stream_id: int
    track_alias: int | None
    group: int | None
    subgroup: int | None
    request_id: int | None
    held_bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class GoawayReceived:
    new_session_uri: str


@dataclass(frozen=True, slots=True)
class SessionClosed:
    code: int
    reason: str
    by_us: bool = False  # this side closed it for what the peer sent (a protocol error or a limit)


@dataclass(frozen=True, slots=True)
class FetchRequested:
    """FETCH. Standalone: ``namespace``/``track_name`` from ``start`` to ``end`` (exclusive; object 0
    means the whole end group). Joining: ``joining_request_id`` names a subscription and
    ``joining_start`` counts groups back from its largest (relative) or names the first (absolute)."""

    request_id: int
    fetch_type: int
    namespace: tuple[str, ...]
    track_name: str
    start: tuple[int, int]
    end: tuple[int, int]
    joining_request_id: int
    joining_start: int
    descending: bool
    authorization: str | None = _token()


@dataclass(frozen=True, slots=True)
class FetchAccepted:
    """FETCH_OK: the fetch covers objects up to ``end`` (exclusive)."""

    request_id: int
    end_of_track: bool
    end: tuple[int, int]
    extensions: dict = field(default_factory=dict)  # Track Extensions (a relay forwards them)


@dataclass(frozen=True, slots=True)
class FetchCancelled:
    request_id: int


@dataclass(frozen=True, slots=True)
class FetchObjectReceived:
    request_id: int
    group: int
    subgroup: int
    object_id: int
    payload: bytes
    extensions: dict
    priority: int
    datagram: bool = False  # an object of Forwarding Preference Datagram (``subgroup`` means nothing)


@dataclass(frozen=True, slots=True)
class FetchRangeUnavailable:
    """Objects after the previous fetched one up to (``group``, ``object_id``) are unknown to the
    publisher (``unknown``) or do not exist."""

    request_id: int
    group: int
    object_id: int
    unknown: bool


@dataclass(frozen=True, slots=True)
class FetchEnded:
    """The fetch stream ended: with FIN (``code`` None, every object in range arrived) or reset."""

    request_id: int
    code: int | None = None


@dataclass(frozen=True, slots=True)
class RequestUpdated:
    """REQUEST_UPDATE of our request ``existing_request_id`` (a track we PUBLISHed or a SUBSCRIBE we
    serve); ``forward`` is its FORWARD parameter (None when absent). A SUBSCRIPTION_FILTER, when
    present, replaces the subscription's filter: ``filter_type`` (None: absent, the filter is
    unchanged), ``start`` and ``end_group`` as in SubscribeRequested; ``delivery_timeout_ms`` its
    DELIVERY_TIMEOUT (None: absent, unchanged). Answer request_ok/request_error with ``request_id``."""

    request_id: int
    existing_request_id: int
    forward: bool | None
    filter_type: int | None = None
    start: tuple[int, int] | None = None
    end_group: int | None = None
    delivery_timeout_ms: int | None = None
