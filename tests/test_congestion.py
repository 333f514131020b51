"""The aioquic congestion controller for live media (rtmpq/moq/congestion.py), in memory.

A small path model drives the controller as aioquic's recovery does (packets sent, acknowledged a
round trip later, or declared lost and their bytes sent again): a live source adds bytes at its
bitrate, the sender sends while the window and a pacer allow. The same paths with aioquic's own
NewReno show what the controller is for.
"""

import heapq
import random

from aioquic.quic.congestion.reno import RenoCongestionControl  # importing it registers "reno"
from aioquic.quic.congestion.base import K_INITIAL_WINDOW, create_congestion_control
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from rtmpq.moq import congestion

MDS = 1200


def run_path(algorithm, *, seconds, rtt, loss=0.0, app_bps=2.7e6, link_bps=None, queue_bytes=32_000,
             burst_at_start=0, seed=1):
    """Simulate ``seconds`` of a live sender; returns (bytes delivered, bytes still waiting, packets
    dropped at the bottleneck, the controller)."""
    cc = create_congestion_control(algorithm, max_datagram_size=MDS)
    rng = random.Random(seed)
    events = []  # (time, seq, "ack" | "lost", packet)
    seq = 0
    backlog = float(burst_at_start)
    delivered = dropped_queue = 0
    link_free = credit = 0.0
    pn = 0
    dt = 0.001
    for step in range(int(seconds / dt)):
        now = step * dt
        backlog += app_bps / 8 * dt
        lost = []
        while events and events[0][0] <= now:
            _, _, kind, packet = heapq.heappop(events)
            if kind == "ack":
                cc.on_packet_acked(now=now, packet=packet)
                cc.on_rtt_measurement(now=now, rtt=now - packet.sent_time)
                delivered += packet.sent_bytes
            else:
                lost.append(packet)
                backlog += packet.sent_bytes  # sent again
        if lost:
            cc.on_packets_lost(now=now, packets=lost)
        # aioquic's pacer: the window over the RTT, in bursts of a few packets
        credit = min(credit + cc.congestion_window / rtt * dt, 4 * MDS)
        while backlog >= MDS and cc.bytes_in_flight + MDS <= cc.congestion_window and credit >= MDS:
            credit -= MDS
            backlog -= MDS
            packet = QuicSentPacket(epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
                                    packet_number=pn, packet_type=QuicPacketType.ONE_RTT, sent_time=now, sent_bytes=MDS)
            pn += 1
            cc.on_packet_sent(packet=packet)
            seq += 1
            if rng.random() < loss:  # declared lost by the ack of a later packet: a bit over an RTT
                heapq.heappush(events, (now + rtt * 9 / 8, seq, "lost", packet))
                continue
            arrive = now
            if link_bps:
                depart = max(now, link_free) + MDS * 8 / link_bps
                if (depart - now) * link_bps / 8 > queue_bytes:
                    dropped_queue += 1
                    heapq.heappush(events, (now + rtt * 9 / 8, seq, "lost", packet))
                    continue
                link_free = arrive = depart
            heapq.heappush(events, (arrive + rtt, seq, "ack", packet))
    return delivered, backlog, dropped_queue, cc


def test_random_loss_does_not_starve_a_live_stream():
    # 2 % random loss, 50 ms RTT, a 2.7 Mbit/s stream (the WAN scoreboard's loss-2pct profile):
    # NewReno halves its window on every loss and settles near 1.6 Mbit/s, so the backlog grows
    # without end; the live controller carries the stream
    live = run_path(congestion.NAME, seconds=20, rtt=0.05, loss=0.02)
    newreno = run_path("reno", seconds=20, rtt=0.05, loss=0.02)
    assert isinstance(newreno[3], RenoCongestionControl)  # compared with aioquic's own NewReno
    assert live[0] * 8 / 20 > 2.55e6 and live[1] < 100_000, live[:2]
    assert newreno[0] * 8 / 20 < 2.2e6 and newreno[1] > 1_000_000, newreno[:2]


def test_bursty_and_heavy_loss_keep_it_going():
    for loss in (0.05, 0.3):
        delivered, backlog, _, _ = run_path(congestion.NAME, seconds=20, rtt=0.05, loss=loss, seed=7)
        assert delivered * 8 / 20 > 2.4e6 and backlog < 300_000, (loss, delivered, backlog)


def test_a_real_bottleneck_is_not_overrun():
    # 1.5 Mbit/s behind a 32 kB drop-tail queue, a 2.7 Mbit/s stream: the controller fills the
    # link, and the rate it measures there keeps it from pushing the queue over again and again
    delivered, _, dropped, cc = run_path(congestion.NAME, seconds=20, rtt=0.05, link_bps=1.5e6)
    sent = delivered / MDS + dropped
    assert delivered * 8 / 20 > 0.9 * 1.5e6
    assert dropped < 0.02 * sent, (dropped, sent)
    assert 1.2e6 < cc.max_rate * 8 < 1.6e6  # it measured the bottleneck


def test_a_long_round_trip_opens_the_window_within_a_few_round_trips():
    # 750 ms RTT, a subscriber joining with a 1 s GOP (~320 kB) to send at once: slow start that
    # doubles once per RTT takes 5 round trips (3.75 s) to clear it; the live controller starts
    # wider and grows faster on a long path, as picoquic does
    live = run_path(congestion.NAME, seconds=3.0, rtt=0.75, burst_at_start=320_000)
    newreno = run_path("reno", seconds=3.0, rtt=0.75, burst_at_start=320_000)
    assert live[1] < 100_000, live[1]  # within 4 round trips the join burst is out
    assert newreno[1] > 300_000, newreno[1]
    # a short path keeps RFC 9002's initial window and slow start
    cc = create_congestion_control(congestion.NAME, max_datagram_size=MDS)
    cc.on_rtt_measurement(now=0.05, rtt=0.05)
    assert cc.congestion_window == K_INITIAL_WINDOW * MDS


def test_a_path_gone_dark_forgets_its_rate():
    _, _, _, cc = run_path(congestion.NAME, seconds=5, rtt=0.05, loss=0.02)
    assert cc.floor() > 20_000
    cc.on_persistent_congestion()
    assert cc.floor() == 0 and cc.congestion_window == 2 * MDS
