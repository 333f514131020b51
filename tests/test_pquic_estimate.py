"""aiopquic's acknowledgement estimate (``_PquicWriter``) driven in memory: a fake picoquic
connection that reports what aiopquic reports (per-stream packetized offsets, connection path
snapshots), no sockets, the clock moved by hand."""

import pytest

from rtmpq.moq import transport
from rtmpq.moq.transport import (HELD_RESET_MAX_BYTES, LOSS_RATE_MIN_PACKETS, LOSS_RATE_WINDOW,
                                 RESET_PRIORITY, _PquicWriter)


class FakePicoquic:
    """What ``_PquicWriter`` reads of aiopquic's QuicConnection, and the calls it makes."""

    def __init__(self):
        self._closed = False
        self._cnx_ptr = 1
        self._stream_ctxs = {}
        self.packetized = {}
        self.calls = []
        self.path = {"sent": 0, "lost": 0, "bytes_sent": 0, "bytes_in_transit": 0, "rtt": 50_000}

    def send_stream_data(self, stream_id, data, end_stream=False):
        self._stream_ctxs[stream_id] = 1
        self.calls.append(("send", stream_id, len(data)))

    def tx_sent_bytes(self, stream_id):
        return self.packetized.get(stream_id, 0)

    def path_quality(self):
        return dict(self.path)

    def set_stream_priority(self, stream_id, priority):
        self.calls.append(("priority", stream_id, priority))

    def reset_stream(self, stream_id, code):
        self.calls.append(("reset", stream_id, code))


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: now[0])
    return now


def send_packets(quic, clock, packets, lost):
    """``packets`` packets sent over the next LOSS_RATE_WINDOW, ``lost`` of them declared lost."""
    quic.path["sent"] += packets
    quic.path["lost"] += lost
    quic.path["bytes_sent"] += packets * 1200
    clock[0] += LOSS_RATE_WINDOW / 2


def test_a_path_losing_30_percent_puts_the_estimate_in_doubt_and_2_percent_does_not(clock):
    quic = FakePicoquic()
    writer = _PquicWriter(quic)
    assert not writer.lossy  # nothing sent yet
    for _ in range(4):
        send_packets(quic, clock, 100, 2)
        assert not writer.lossy
    for _ in range(2):
        send_packets(quic, clock, 100, 30)
    assert writer.lossy
    for _ in range(4):  # the loss is over: the doubt goes within the window
        send_packets(quic, clock, 100, 1)
    assert not writer.lossy
    # too few packets to judge (a quiet connection): no doubt from a lost probe or two
    send_packets(quic, clock, LOSS_RATE_MIN_PACKETS // 4, LOSS_RATE_MIN_PACKETS // 8)
    send_packets(quic, clock, LOSS_RATE_MIN_PACKETS // 4, LOSS_RATE_MIN_PACKETS // 8)
    assert not writer.lossy


def test_a_stream_is_raised_to_the_top_priority_just_before_its_reset(clock):
    # picoquic sends RESET_STREAM in the stream's turn and resends the stream's lost data until
    # then: an older group behind a newer one with data went on arriving seconds after its reset
    quic = FakePicoquic()
    writer = _PquicWriter(quic)
    writer.send_stream_data(3, bytes(HELD_RESET_MAX_BYTES + 1000))
    writer.reset_stream(3, 2)
    assert quic.calls[-2:] == [("priority", 3, RESET_PRIORITY), ("reset", 3, 2)]
