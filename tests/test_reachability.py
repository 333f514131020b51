"""PeerReachability: ICMP unreachable for a client's peer is the connection lost only when it keeps
coming with nothing received meanwhile (a stray or forged ICMP must not cut a healthy session)."""

from rtmpq.moq.reachability import PeerReachability

GRACE = 1.0


def test_refusals_kept_up_with_nothing_received_for_the_grace_are_a_peer_gone():
    r = PeerReachability(GRACE)
    assert r.refused(10.0, received=5)  # the first of a run: probe again at once
    assert not r.refused(10.01, received=5)
    assert not r.gone(10.5, received=5)  # not for long enough yet
    assert not r.refused(11.0, received=5)
    assert r.gone(11.0, received=5)
    assert r.refused_for(11.0) == 1.0


def test_one_stray_refusal_never_cuts_the_connection():
    r = PeerReachability(GRACE)
    r.refused(10.0, received=5)
    assert not r.gone(60.0, received=5)  # one refusal alone, however long ago


def test_a_packet_received_after_a_refusal_starts_over():
    r = PeerReachability(GRACE)
    r.refused(10.0, received=5)
    r.refused(10.5, received=5)
    assert not r.gone(11.5, received=6)  # the peer answered: alive
    assert r.refused(11.6, received=6)  # a new run, from here
    r.refused(12.0, received=6)
    assert not r.gone(12.5, received=6)
    assert r.gone(12.6, received=6)


def test_silence_is_nothing_received_since_the_last_check():
    r = PeerReachability(GRACE)
    assert not r.silent(3)
    assert r.silent(3)
    assert not r.silent(4)
