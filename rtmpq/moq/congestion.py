"""aioquic congestion control for live media: NewReno with a floor that random loss cannot cut.

NewReno (aioquic's default) halves its window on every loss event, congestion or not: at 2 %
random loss and 50 ms RTT it settles near 1.2/sqrt(p) packets per round trip, ~1.6 Mbit/s, below
a 720p stream's 2.7 (docs/reliability.md, WAN profiles). picoquic's BBR does not, because it paces
by the bandwidth it measures, not by the losses it sees. This controller keeps NewReno's window
(slow start, halving on loss) but never lets the congestion window fall below ``FLOOR_GAIN`` x the
path's bandwidth-delay product as measured: the highest delivery rate of the last ``BW_WINDOW``
seconds (BBR's rate samples: bytes acknowledged between a packet's send and its ack, over the
longer of the send and ack intervals) times the smallest RTT seen on the connection. BBR v1 caps
its window at the same 2 x BDP.

- Random loss: the floor holds the window at twice what the path just delivered, so the rate
  climbs to the link's (or the stream's) rate whatever NewReno does.
- A real bottleneck: the delivery rate measured is the bottleneck's, so the floor keeps at most
  one BDP queued there (1.5 Mbit/s x 50 ms: 9 kB); tail drops above that still halve NewReno.
- The smallest RTT is never forgotten (BBR forgets it after 10 s and drains its queue to measure
  it again; we do not drain): a floor kept over a bottleneck's queue would see that queue in every
  RTT sample, take it for path, raise the floor and keep the queue full. A path that got longer
  only makes the floor lower than it could be: NewReno then decides, as without a floor.
- A path that goes dark (persistent congestion): the rate history is forgotten with the window.
- A long round trip: slow start doubles the window once per RTT, so at 750 ms a subscriber's first
  group (up to a 1 s GOP, ~300 kB, sent at once when it joins) took 4 s to leave and its budget
  ran out. As picoquic does, a path whose RTT is N times ``RENO_RTT`` (N counted up to
  ``SATELLITE_RTT / RENO_RTT``) starts with N times the initial window and grows it N times
  faster in slow start: per second, like a 100 ms path.

Sans-I/O like the rest of aioquic's recovery: every call gets the time.
"""

from collections import deque
from collections.abc import Iterable

from aioquic.quic.congestion.base import (
    K_INITIAL_WINDOW,
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    QuicRttMonitor,
    register_congestion_control,
)

NAME = "live"
# The window's floor in bandwidth-delay products (BBR's cwnd gain).
FLOOR_GAIN = 2.0
# Seconds the highest delivery rate is remembered: several 1 s GOPs, so a keyframe burst (when a
# live sender is not application-limited) is always in it, and a stall of a second or two (a
# CPU-starved process measures its own slowness) does not erase it.
BW_WINDOW = 5.0
# NewReno's multiplicative decrease.
LOSS_REDUCTION_FACTOR = 0.5
# Seconds of RTT above which slow start is scaled up (by RTT / RENO_RTT, the RTT taken at most
# SATELLITE_RTT): picoquic's PICOQUIC_TARGET_RENO_RTT and _SATELLITE_RTT.
RENO_RTT = 0.1
SATELLITE_RTT = 0.6


class LiveCongestionControl(QuicCongestionControl):
    """NewReno, with the congestion window floored at FLOOR_GAIN x max delivery rate x min RTT."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mds = max_datagram_size
        self.reno_window = self.congestion_window
        self._recovery_start = 0.0
        self._stash = 0
        self._rtt_monitor = QuicRttMonitor()
        # delivery-rate sampling (BBR): bytes acknowledged so far, when, and the send time of the
        # newest packet acknowledged; each packet in flight keeps the three as they were at its send
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._at_send: dict[int, tuple[int, float, float]] = {}
        self._rates: deque = deque()  # (time, bytes/s), rates decreasing: a windowed max
        self.min_rtt = 0.0  # the smallest RTT seen (0: none yet)

    # -- the model ---------------------------------------------------------------------------------
    @property
    def max_rate(self) -> float:
        return self._rates[0][1] if self._rates else 0.0

    def floor(self) -> int:
        return int(FLOOR_GAIN * self.max_rate * self.min_rtt)

    def _slow_start_scale(self) -> float:
        return min(max(self.min_rtt, RENO_RTT), SATELLITE_RTT) / RENO_RTT

    def _update(self) -> None:
        self.congestion_window = max(self.reno_window, self.floor(), K_MINIMUM_WINDOW * self._mds)

    def _sample_rate(self, now: float, rate: float) -> None:
        rates = self._rates
        while rates and rates[-1][1] <= rate:
            rates.pop()
        rates.append((now, rate))
        while rates[0][0] < now - BW_WINDOW:
            rates.popleft()

    # -- aioquic's interface ----------------------------------------------------------------------
    def on_packet_sent(self, *, packet) -> None:
        if self.bytes_in_flight == 0:  # from idle: intervals start now, not at the last ack
            self._first_sent_time = self._delivered_time = packet.sent_time
        self.bytes_in_flight += packet.sent_bytes
        self._at_send[id(packet)] = (self._delivered, self._delivered_time, self._first_sent_time)

    def on_packet_acked(self, *, now: float, packet) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self._delivered += packet.sent_bytes
        self._delivered_time = now
        at_send = self._at_send.pop(id(packet), None)
        if at_send is not None:
            delivered, delivered_time, first_sent_time = at_send
            self._first_sent_time = packet.sent_time
            # the longer interval: acks bunched together (or sends) must not inflate the rate;
            # shorter than a round trip cannot be trusted at all (Linux's tcp_rate does the same)
            interval = max(packet.sent_time - first_sent_time, now - delivered_time)
            if interval > 0 and interval >= self.min_rtt:
                self._sample_rate(now, (self._delivered - delivered) / interval)

        if packet.sent_time > self._recovery_start:  # no growth during recovery
            if self.ssthresh is None or self.reno_window < self.ssthresh:
                self.reno_window += int(packet.sent_bytes * self._slow_start_scale())  # slow start
            else:
                self._stash += packet.sent_bytes
                count = self._stash // self.reno_window
                if count:
                    self._stash -= count * self.reno_window
                    self.reno_window += count * self._mds
        self._update()

    def on_packets_expired(self, *, packets: Iterable) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._at_send.pop(id(packet), None)

    def on_packets_lost(self, *, now: float, packets: Iterable) -> None:
        lost_largest_time = 0.0
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._at_send.pop(id(packet), None)
            lost_largest_time = packet.sent_time
        # one decrease per round trip of losses (those sent before the last decrease are its own)
        if lost_largest_time > self._recovery_start:
            self._recovery_start = now
            self.reno_window = max(int(self.reno_window * LOSS_REDUCTION_FACTOR), K_MINIMUM_WINDOW * self._mds)
            self.ssthresh = self.reno_window
        self._update()

    def on_persistent_congestion(self) -> None:
        self.reno_window = K_MINIMUM_WINDOW * self._mds
        self._recovery_start = 0.0
        self._rates.clear()  # the path went dark: what it delivered before says nothing now
        self._update()

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if not self.min_rtt and self.ssthresh is None:  # the first sample: a long path starts wider
            self.reno_window = max(self.reno_window, int(K_INITIAL_WINDOW * self._mds * min(max(rtt, RENO_RTT), SATELLITE_RTT) / RENO_RTT))
            self._update()
        if not self.min_rtt or rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.ssthresh is None and self._rtt_monitor.is_rtt_increasing(now=now, rtt=rtt):
            self.ssthresh = self.reno_window  # HyStart: leave slow start when the RTT grows

    def get_log_data(self) -> dict:
        data = super().get_log_data()
        data.update(reno_window=self.reno_window, max_rate=int(self.max_rate), min_rtt=self.min_rtt)
        return data


register_congestion_control(NAME, LiveCongestionControl)
