"""Objects that come as OBJECT_DATAGRAMs, taken into a track's frames (MoQT d16, "Object
Datagram": Forwarding Preference Datagram, per object).

A datagram carries one object of a group (Group ID, Object ID; no subgroup, no stream), and may
be lost, duplicated or reordered on the way. Nothing says when a missing object will come, or
whether it ever will, so nothing waits for one: a datagram's frame goes on as it comes when it is
of the group being delivered (an Object ID above the last handed on: a gap is let go) or of a
newer group (which starts there). One of an older group, or one at or below an Object ID already
handed on in its group (a duplicate, or one overtaken by a later object), is dropped and
counted: the consumers take a track's frames in decode order (the edge's packager), and a frame
going back in time would be worse than a frame missing. An END_OF_GROUP (the bit on an object,
or a status datagram) ends its group: nothing of it is handed on after that.

Sans-I/O: no clock; the caller asks per object and reads ``dropped``.
"""

import logging

log = logging.getLogger("rtmpq.moq")


class _Delivering:
    __slots__ = ("group", "next", "ended")

    def __init__(self, group: int, next_id: int, ended: bool) -> None:
        self.group = group  # the group being delivered
        self.next = next_id  # the lowest Object ID of it still to hand on
        self.ended = ended  # its END_OF_GROUP came: nothing more of it


class DatagramOrder:
    """Which datagram objects of each track go on (see the module). ``dropped``: the objects
    dropped since it was made (a subscriber's count across its subscriptions: ``restart``
    keeps it)."""

    def __init__(self, label: str = "?") -> None:
        self.label = label  # the broadcast, for the log (already safe to show)
        self.dropped = 0
        self._tracks: dict[str, _Delivering] = {}

    def admit(self, track: str, group: int, object_id: int, end_of_group: bool = False) -> bool:
        """A Normal object of ``track`` that came in a datagram: whether its frame goes on."""
        at = self._tracks.get(track)
        if at is None or group > at.group:
            self._tracks[track] = _Delivering(group, object_id + 1, end_of_group)
            return True
        if group == at.group and not at.ended and object_id >= at.next:
            at.next = object_id + 1  # (the objects skipped over are not waited for)
            at.ended = end_of_group
            return True
        self.dropped += 1
        if group < at.group:
            why = f"its group is older than the one delivered ({at.group})"
        elif object_id >= at.next:
            why = "after its group's END_OF_GROUP"
        else:
            why = "a duplicate, or overtaken by a later object of its group"
        log.debug("%s %s: datagram object %d/%d dropped: %s", self.label, track, group, object_id, why)
        return False

    def end_group(self, track: str, group: int, object_id: int) -> None:
        """An END_OF_GROUP status datagram: no object of ``group`` at or after ``object_id``."""
        at = self._tracks.get(track)
        if at is None or group > at.group:
            self._tracks[track] = _Delivering(group, object_id, True)
        elif group == at.group:
            at.ended = True

    def forget(self, track: str) -> None:
        """``track``'s subscription is let go (a new one starts afresh)."""
        self._tracks.pop(track, None)

    def restart(self) -> None:
        """A new subscription (after a reconnection): every track starts afresh; the count goes on."""
        self._tracks.clear()
