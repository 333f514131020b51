"""Two MoqSessions over a pair of aioquic QuicConnections, in memory: no sockets, no sleeps.

``pair.pump()`` moves datagrams both ways until both sides are quiet and returns the MoQ events
each side reported. The clock is a number advanced by hand.
"""

import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from rtmpq.moq import events as ev
from rtmpq.moq import wire
from rtmpq.moq.session import MoqSession
from rtmpq.moq.tls import ensure_self_signed

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("5.6.7.8", 4443)


class MoqPair:
    def __init__(self, tmp_path, client_kwargs: dict | None = None, **server_kwargs) -> None:
        cert, key = ensure_self_signed(tmp_path / "tls")
        server_config = QuicConfiguration(is_client=False, alpn_protocols=[wire.ALPN])
        server_config.load_cert_chain(str(cert), str(key))
        client_config = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN], verify_mode=ssl.CERT_NONE,
                                          server_name="localhost")
        self.now = 0.0
        self.client_quic = QuicConnection(configuration=client_config)
        self.server_quic = QuicConnection(configuration=server_config,
                                          original_destination_connection_id=self.client_quic.original_destination_connection_id)
        self.client = MoqSession(self.client_quic, is_client=True, **(client_kwargs or {}))
        self.server = MoqSession(self.server_quic, is_client=False, **server_kwargs)
        self.client_quic.connect(SERVER_ADDR, now=self.now)

    def pump(self) -> tuple[list, list]:
        """(client events, server events) until no datagram is left in flight."""
        client_events, server_events = [], []
        for _ in range(10_000):
            moved = False
            for src, dst, dst_addr, src_addr in ((self.client_quic, self.server_quic, SERVER_ADDR, CLIENT_ADDR),
                                                 (self.server_quic, self.client_quic, CLIENT_ADDR, SERVER_ADDR)):
                for data, _ in src.datagrams_to_send(now=self.now):
                    dst.receive_datagram(data, src_addr, now=self.now)
                    moved = True
            for quic, session, out in ((self.client_quic, self.client, client_events),
                                       (self.server_quic, self.server, server_events)):
                while (event := quic.next_event()) is not None:
                    out += session.handle_event(event)
            if not moved:
                return client_events, server_events
            self.now += 0.001
        raise AssertionError("the sessions never went quiet")

    def run_timers(self) -> tuple[list, list]:
        """Advance the clock to each side's next QUIC timer (a closing connection reports its end
        when its drain timer fires) and pump."""
        client_events, server_events = [], []
        for quic in (self.client_quic, self.server_quic):
            timer = quic.get_timer()
            if timer is not None:
                self.now = max(self.now, timer)
                quic.handle_timer(now=self.now)
            c, s = self.pump()
            client_events += c
            server_events += s
        return client_events, server_events

    def setup(self) -> None:
        client_events, server_events = self.pump()
        assert any(isinstance(e, ev.SetupComplete) for e in client_events)
        assert any(isinstance(e, ev.SetupComplete) for e in server_events)


def closed_with(events) -> ev.SessionClosed | None:
    return next((e for e in events if isinstance(e, ev.SessionClosed)), None)
