"""Joining the MSF catalog track: when to FETCH its current version, when to fall back.

MSF (draft 16): a SUBSCRIBE to the catalog brings only the versions published from then on; the
current one comes by a Joining FETCH (offset 0) of that SUBSCRIBE, which needs the Largest Object
filter. A SUBSCRIBE_OK with no Largest Location means nothing was published yet: every version
will come on the subscription, no FETCH. If the FETCH is refused, reset, empty, or not over within
``CATALOG_FETCH_WAIT``, and no version came live meanwhile, the catalog is subscribed again
unfiltered, which a publisher or relay without FETCH answers by replaying its current version
(rtmpq's relay does). A late answer of the FETCH still counts: the caller's reader keeps the
newest version, whichever way it came.

One ``CatalogJoin`` per catalog a subscriber joins: the client's (``subscribe_broadcast``: the edge,
``rtmpq sub``), the relay's upstream one (upstream.py) and the transcoder's (nodes/transcode.py).
Sans-I/O: the caller sends the SUBSCRIBE and the FETCH, and asks ``falls_back`` when the FETCH is
over and again at ``deadline``.
"""

import logging

from .wire import FILTER_LARGEST_OBJECT

log = logging.getLogger("rtmpq.moq")

# Seconds the catalog's joining FETCH may take to bring a version before the catalog is also asked
# for the way relays without FETCH answer (an unfiltered SUBSCRIBE, which rtmpq's relay replays on).
CATALOG_FETCH_WAIT = 1.0


class CatalogJoin:
    """One subscriber's join of one broadcast's catalog, across its re-subscriptions."""

    def __init__(self, label: str) -> None:
        self.label = label  # for the log: the broadcast, already made safe to print
        self.unfiltered = False  # the FETCH brought nothing: the catalog is subscribed unfiltered
        self.fetch: int | None = None  # the joining FETCH not over yet (its request id)
        self.deadline: float | None = None  # when its wait ends (None: no FETCH asked)

    @property
    def filter_type(self) -> int | None:
        """The catalog SUBSCRIBE's filter (None: unfiltered)."""
        return None if self.unfiltered else FILTER_LARGEST_OBJECT

    def wants_fetch(self, largest: tuple[int, int] | None) -> bool:
        """On the catalog's SUBSCRIBE_OK (``largest``: its Largest Location): whether to send the joining FETCH."""
        return not self.unfiltered and largest is not None

    def fetching(self, request_id: int, now: float) -> None:
        """The joining FETCH went out: call ``falls_back`` again at ``deadline``."""
        self.fetch, self.deadline = request_id, now + CATALOG_FETCH_WAIT

    def is_fetch(self, request_id: int | None) -> bool:
        return request_id is not None and request_id == self.fetch

    def fetch_over(self) -> None:
        """The joining FETCH ended, was reset or refused: what it brought has come."""
        self.fetch = None

    def new_session(self) -> None:
        """The catalog is subscribed on another session: a FETCH on the old one no longer counts."""
        self.fetch = self.deadline = None

    def falls_back(self, now: float, held: bool) -> bool:
        """Whether to subscribe to the catalog unfiltered now (True once, and logged): the FETCH is
        over or its wait has passed, and no version came (``held``: one came, fetched or live)."""
        if self.unfiltered or held or self.deadline is None:
            return False
        if self.fetch is not None and now < self.deadline:
            return False
        self.unfiltered = True
        log.info("%s: the catalog's joining FETCH brought nothing%s: subscribing to it unfiltered", self.label,
                 "" if self.fetch is None else f" in {CATALOG_FETCH_WAIT:g} s")
        return True
