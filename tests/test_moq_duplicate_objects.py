"""A publisher that sends objects the relay has already (a subgroup sent again on a second stream,
as a publisher that resends after a reconnect, or two publishers of one track, may do): draft 16
"Multiple Publishers", the relay SHOULD deduplicate before forwarding. It forwarded them, its
own subgroup stream to the subscriber then had to go back in object ids, and that subscriber's
stream broke on it."""

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq import wire
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import ObjectStatus

from .conftest import announced, serving_relay
from .test_moq_subgroups import NAMESPACE, Viewer, subscribe


class ResendingPublisher:
    """Serves ``video``: group 0 objects 0-2 on one stream; ``again()`` sends the same subgroup
    on a second stream, objects 0-4 (0-2 the same bytes again); ``end()`` FINs both."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.streams: list[int] = []
        conn.handler = self._on_event

    def _stream(self, objects) -> int:
        quic = self.conn.session.quic
        sid = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(sid, wire.SubgroupHeader(0, 0, 0, 128, end_of_group=True).encode())
        last = -1
        for object_id in objects:
            data = f"video 0.{object_id}".encode()
            quic.send_stream_data(sid, wire.encode_object(object_id - last - 1, data, None, with_extensions=True,
                                                          status=ObjectStatus.NORMAL) + data)
            last = object_id
        return sid

    def _on_event(self, _conn, event) -> None:
        if isinstance(event, ev.SubscribeRequested) and event.track_name == "video":
            self.conn.session.subscribe_ok(event.request_id, 0)
            self.streams.append(self._stream(range(3)))
            self.conn.flush()

    def again(self) -> None:
        self.streams.append(self._stream(range(5)))
        self.conn.flush()

    def end(self) -> None:
        for sid in self.streams:
            self.conn.session.quic.send_stream_data(sid, b"", end_stream=True)
        self.conn.flush()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_objects_sent_again_reach_subscribers_once(tmp_path, backend):
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as late_conn):
            await announced(pub, NAMESPACE)
            publisher = ResendingPublisher(pub)
            viewer = Viewer(conn)
            subscribe(viewer)
            await viewer.until(lambda: len(viewer.objects()) >= 3, "objects 0-2")
            publisher.again()
            await viewer.until(lambda: len(viewer.objects()) >= 5, "objects 3-4")
            late = Viewer(late_conn)  # served the group in progress from the relay's cache
            subscribe(late)
            await late.until(lambda: len(late.objects()) >= 5, "the cached objects")
            publisher.end()
            for v in (viewer, late):
                await v.until(lambda: (0, 0) in v.ended(), "the subgroup to end")
    for v in (viewer, late):
        got = [(e.object_id, bytes(e.payload)) for e in v.objects()]
        assert got == [(i, f"video 0.{i}".encode()) for i in range(5)]  # each once, in order
        resets = [e for e in v.events if isinstance(e, ev.SubgroupReset)]
        assert not resets, resets
