"""The directory's decisions in memory (rtmpq/directory/core.py): leases a node writes and renews,
and the mirror followers keep; the time is an argument, so no Redis and no sleeps."""

import pytest

from rtmpq.directory.core import (Change, Claim, Entry, Mirror, Registrar, Renew, Withdraw, announcement,
                                  safe_url)
from rtmpq.errors import RemoteProtocolError


def test_a_publisher_here_is_claimed_renewed_within_its_lease_and_withdrawn_when_it_leaves():
    r = Registrar("node-a", "moqt://a:4443", ttl=3.0)
    assert r.update({"live/cam1"}, now=0.0) == [Claim("live/cam1")]
    assert r.update({"live/cam1"}, now=0.1) == []  # the claim is on its way: not twice
    r.claimed(r.entry("live/cam1", 7), now=0.2)
    assert r.update({"live/cam1"}, now=1.0) == []
    renewals = [now for now in (x / 10 for x in range(10, 100)) if r.update({"live/cam1"}, now)]
    # renewed RENEWALS_PER_TTL times per lease: one lost renewal never lets it lapse
    assert renewals and all(b - a < 3.0 / 2 for a, b in zip([0.2, *renewals], renewals))
    assert r.update(set(), now=10.0) == [Withdraw(Entry("live/cam1", "moqt://a:4443", "node-a", 7))]
    assert r.update(set(), now=20.0) == []


def test_another_nodes_claim_is_never_renewed_over_and_a_returning_publisher_claims_again():
    r = Registrar("node-a", "moqt://a:4443", ttl=3.0)
    r.update({"live/x"}, 0.0)
    r.claimed(r.entry("live/x", 1), 0.0)
    [renew] = r.update({"live/x"}, 1.0)
    assert isinstance(renew, Renew)
    r.superseded("live/x")  # the renewal script found node-b's claim
    assert r.update({"live/x"}, 5.0) == []  # no renewal, no new claim while it is node-b's
    assert r.update(set(), 6.0) == []  # nothing of ours to withdraw
    assert r.update({"live/x"}, 7.0) == [Claim("live/x")]  # a new publish here takes it back


def test_a_claim_that_failed_is_tried_again_and_stop_withdraws_everything():
    r = Registrar("n", "moqt://n:1", ttl=1.0)
    assert r.update({"a", "b"}, 0.0) == [Claim("a"), Claim("b")]
    r.failed("a")
    r.claimed(r.entry("b", 2), 0.0)
    assert r.update({"a", "b"}, 0.1) == [Claim("a")]
    assert r.withdraw_all() == [Withdraw(r.entry("b", 2))]
    with pytest.raises(ValueError):
        Registrar("n", "moqt://n:1", ttl=0)


def test_the_mirror_follows_moves_and_lapses_and_a_snapshot_cannot_undo_a_newer_claim():
    m = Mirror()
    a = Entry("live/x", "moqt://a:1", "a", version=1)
    b = Entry("live/x", "moqt://b:1", "b", version=2)
    assert m.apply_message(announcement("live/x", a)) == [Change("live/x", None, a)]
    # the shell applies a snapshot whole, between announcements: one that began (counter at 1)
    # before b's claim may show a, or nothing, for the name; b's announcement comes after it
    assert m.snapshot([a], version_before=1) == []
    assert m.apply_message(announcement("live/x", b)) == [Change("live/x", a, b)]
    # a withdrawal of a's old claim arriving after b took the name is ignored
    assert m.apply_message(announcement("live/x", None, withdrawn=a)) == []
    # a snapshot that began after b's claim and does not list it: b's lease lapsed (b died)
    assert m.snapshot([], version_before=2) == [Change("live/x", b, None)]
    m.claimed(b)
    assert m.claimed(b) == []  # a renewal (the same claim) changes nothing


def test_bad_directory_data_is_refused_and_the_mirror_is_bounded():
    with pytest.raises(RemoteProtocolError):
        Entry.decode("x", b"not json")
    with pytest.raises(RemoteProtocolError):
        Entry.decode("x", '{"url": "http://evil", "node": "n"}')
    with pytest.raises(RemoteProtocolError):
        Entry.decode("x", b"{" + b" " * 5000 + b"}")
    with pytest.raises(RemoteProtocolError):
        Mirror().apply_message(b'{"nme": 1}')
    with pytest.raises(RemoteProtocolError):  # nested deeper than the JSON reader goes: refused, not raised past
        Entry.decode("x", b"[" * 3000)
    with pytest.raises(RemoteProtocolError):
        Mirror().apply_message(b"[" * 3000)
    with pytest.raises(RemoteProtocolError):
        Mirror().apply_message(b'{"name": "x", "gone": "' + b"n" * 10000 + b'"}')
    m = Mirror(max_entries=2)
    for i in range(3):
        m.claimed(Entry(f"n{i}", "moqt://a:1", "a", i))
    assert len(m.entries) == 2 and m.dropped == 1 and m.fill_ups == 1
    m.claimed(Entry("n3", "moqt://a:1", "a", 3))
    assert m.dropped == 2 and m.fill_ups == 1  # still the same fill-up: logged once
    m.withdrawn("n0", "a", 0)
    m.claimed(Entry("n4", "moqt://a:1", "a", 4))
    m.claimed(Entry("n5", "moqt://a:1", "a", 5))
    assert set(m.entries) == {"n1", "n4"} and m.dropped == 3 and m.fill_ups == 2  # room, then full again
    e = Entry("live/y", "moqt://h:2", "h", 3, "ab" * 32)
    assert Entry.decode("live/y", e.encode()) == e


def test_a_redis_password_never_shows():
    assert safe_url("redis://:hunter2@r:6379/0") == "redis://:********@r:6379/0"
    assert "hunter2" not in safe_url("redis://user:hunter2@r/1")
    assert safe_url("redis://r:6379/0") == "redis://r:6379/0"


def test_after_redis_lost_its_data_the_mirror_takes_what_it_holds_now():
    m = Mirror()
    a = Entry("live/x", "moqt://a:1", "a", version=40)
    m.claimed(a)
    # Redis restarted: its counter starts again, and the origin that has the publisher now
    # (b, after a move meanwhile) writes its claim with a small version
    b = Entry("live/x", "moqt://b:1", "b", version=1)
    assert m.claimed(b) == []  # an announcement alone cannot tell a restart from a stale message
    changes = m.snapshot([b], version_before=1)
    assert m.entries == {"live/x": b} and changes == [Change("live/x", a, b)]
    assert m.snapshot([b], version_before=1) == []  # and it stays, with no churn
    r = Registrar("b", "moqt://b:1", ttl=3.0)
    r.update({"live/x"}, 0.0)
    r.claimed(r.entry("live/x", 40), 0.0)
    r.lapsed("live/x")  # its renewal found no entry
    assert r.update({"live/x"}, 0.1) == [Claim("live/x")]  # claimed again, with a fresh version
