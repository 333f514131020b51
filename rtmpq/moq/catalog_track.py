"""The MSF catalog track as a subscriber reads it: one Catalog per object applied.

MSF: object 0 of a group holds an independent catalog, every later object of the group a delta
update of it (media/catalog_delta.py), applied in object order; updates before object 0 of the
latest group are ignored. A SUBSCRIBE and its joining FETCH can bring objects of one group out
of order (a later delta on the subscription before object 0 on the fetch), so a delta that comes
before the one it follows waits (a few at most) and is applied as soon as that one is. Object IDs
of a catalog group are taken to follow one another (0, 1, 2...): a gap holds the deltas after it.

A bad object (not JSON, a version rtmpq does not read, a malformed delta) is not applied: the
catalog stays the last good one, a warning is logged once per reader, and the rest of that group
is ignored (its deltas would apply to what was refused); a new group starts afresh.
"""

import logging

from ..errors import RemoteProtocolError
from ..media.catalog import PRIVATE_CATALOG_VERSION, Catalog, load_catalog_json
from ..media.catalog_delta import apply_delta, is_delta

log = logging.getLogger("rtmpq.moq")

MAX_WAITING_DELTAS = 32  # deltas held for the object before them, per group


class CatalogTrack:
    def __init__(self, label: str) -> None:
        self.label = label  # for the log: the broadcast, already made safe to print
        self.catalog: Catalog | None = None  # the last good catalog
        self.group: int | None = None  # the newest group seen
        self._doc: dict | None = None  # that group's catalog document, its deltas applied so far
        self._next = 0  # the object of that group to apply next
        self._waiting: dict[int, bytes] = {}  # deltas of that group that came early, by object id
        self._broken = False  # an object of that group was refused: the rest is ignored
        self._warned = False

    def read(self, group: int, object_id: int, payload) -> list[Catalog]:
        """The catalogs this object makes, in order (none: it is old, early, or refused)."""
        if self.group is not None and group < self.group:
            return []  # MSF: updates before object 0 of the latest group are ignored
        if group != self.group:
            self.group, self._doc, self._next, self._waiting, self._broken = group, None, 0, {}, False
        if self._broken or object_id < self._next:
            return []
        if object_id > self._next:
            if len(self._waiting) < MAX_WAITING_DELTAS:
                self._waiting[object_id] = bytes(payload)
            return []
        out = []
        while True:
            try:
                out.append(self._apply(payload))
            except (ValueError, TypeError) as exc:  # RemoteProtocolError, or a field of the wrong type
                self._refuse(exc)
                return out
            self._next += 1
            if (payload := self._waiting.pop(self._next, None)) is None:
                return out

    def _apply(self, payload) -> Catalog:
        doc = load_catalog_json(bytes(payload))
        if self._next == 0:
            if is_delta(doc):
                raise RemoteProtocolError("MSF catalog group starts with a delta update, not an independent catalog")
        else:
            doc = apply_delta(self._doc, doc)
            # rtmpq's private counter of catalog changes (a delta carries no root fields of ours)
            doc[PRIVATE_CATALOG_VERSION] = int(doc.get(PRIVATE_CATALOG_VERSION, 1)) + 1
        catalog = Catalog.from_doc(doc)
        self._doc, self.catalog = doc, catalog
        return catalog

    def _refuse(self, exc: Exception) -> None:
        self._broken, self._waiting = True, {}
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "%s: catalog object %d of group %d not applied, the catalog stays as it was: %s "
                "(said once per subscription)", self.label, self._next, self.group, exc)
