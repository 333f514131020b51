"""Whether a client's peer is gone, from ICMP unreachable for its address (sans-I/O: time passed in).

A killed process sends no CONNECTION_CLOSE, so QUIC learns of it only at its idle timeout. But on
a host or a LAN the dead process's UDP port answers every packet sent to it with ICMP port
unreachable, which a connected UDP socket reports as ECONNREFUSED. One such report is not proof:
an ICMP can be stray or forged, or come from a middlebox for another flow. The peer is taken as
gone when refusals keep coming for ``PEER_UNREACHABLE_GRACE`` with not one packet received from it
meanwhile, and never for one refusal alone. A live peer is not silent that long: on aioquic the
probe sent on a refusal is a PING, acknowledged within a round trip; on aiopquic (no PING on
demand) the probe is a datagram from a side socket, and a live peer's own traffic and picoquic's
keep-alives are what come back.
"""

# Seconds the refusals must go on with nothing received before the peer is taken as gone: above
# a long round trip (a live peer's answer to a probe comes back within one; 750 ms was seen on
# the WAN profiles) and a delayed acknowledgement.
PEER_UNREACHABLE_GRACE = 1.0
# Seconds between checks of a client connection: one that received nothing since the last check
# sends a probe (aioquic: a PING; aiopquic: a datagram from a side socket), so a dead peer's ICMP
# comes within about this long instead of at the next keep-alive (a third of the idle timeout).
SILENCE_PROBE_INTERVAL = 0.5
# Seconds the refusals must go on, with nothing received, before a connection attempt (its
# handshake) is given up as refused: shorter than PEER_UNREACHABLE_GRACE, since a wrong verdict
# costs one attempt (tried again after the reconnect backoff), not a session; and a live server's
# port never refuses, so only forged or stray ICMP kept up this long could mislead it.
HANDSHAKE_UNREACHABLE_GRACE = 0.5
# Seconds at most between attempts to connect to a peer whose port refused: a process restarting
# on a host that is up, where an attempt costs a packet or two and their ICMP, so the reconnect
# loops try again this often (their longer maximum is for the rest: timeouts, refused sessions).
# [upstream] refused_reconnect_max.
REFUSED_RECONNECT_MAX = 2.0


def reconnect_delay(delay: float, exc: BaseException, refused_max: float = REFUSED_RECONNECT_MAX) -> float:
    """A reconnect loop's pause before its next attempt, after the failure ``exc``: at most
    ``refused_max`` ([upstream] refused_reconnect_max) after a refused attempt (connect_moq's
    ConnectionRefusedError)."""
    return min(delay, refused_max) if isinstance(exc, ConnectionRefusedError) else delay


class PeerReachability:
    """Counts the refusals (ECONNREFUSED) since the last packet received.

    ``received`` is a count of what came from the peer (datagrams or bytes: anything that grows
    with each packet); a refusal noted at a different count than the first starts a new run."""

    def __init__(self, grace: float = PEER_UNREACHABLE_GRACE) -> None:
        self.grace = grace
        self._since: float | None = None  # first refusal of the current run
        self._received_then = -1  # the received count at that refusal
        self._refusals = 0
        self._last_received = -1  # the count at the last check

    def refused(self, now: float, received: int) -> bool:
        """Note a refusal; True when it is the first of a run (something was received since the
        last, or none came before)."""
        first = self._since is None or received != self._received_then
        if first:
            self._since, self._received_then, self._refusals = now, received, 0
        self._refusals += 1
        return first

    def silent(self, received: int) -> bool:
        """Nothing received since the last call (a probe is due)."""
        silent = received == self._last_received
        self._last_received = received
        return silent

    def gone(self, now: float, received: int) -> bool:
        """Refused more than once over ``grace`` seconds, with nothing received since the first."""
        return (self._since is not None and received == self._received_then and self._refusals > 1
                and now - self._since >= self.grace)

    def refused_for(self, now: float) -> float:
        return now - self._since if self._since is not None else 0.0
