"""UpstreamLink (nodes/remote.py), the session an `ingest --upstream` or `relay --upstream` keeps to
the node above: a fault in it must not end it for good. Before, an exception other than a
connection error ended the link's task (nothing logged it, nothing reconnected), and a failure of
its announcer left every broadcast started after it unannounced on a session that looked fine: in
both cases the node below went on running while nothing it published reached the relay above."""

import logging

from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.moq.relay import MoqRelay
from rtmpq.moq.session import MoqSession
from rtmpq.nodes.remote import UpstreamLink

from .conftest import start_up_node, until


async def linked(tmp_path, monkeypatch, caplog, fault: str) -> tuple[list[str], set[str]]:
    """An ingest-like relay linked to `rtmpq up` (announce=True), with one fault the first time:
    ``fault`` "setup": handling the new session raises; "announce": the first PUBLISH_NAMESPACE
    raises. Then live/x is published below: (the link's log lines, what the node above has)."""
    caplog.set_level(logging.INFO, logger="rtmpq.nodes")
    node = await start_up_node(tmp_path)
    registry = BroadcastRegistry()
    below = MoqRelay(registry)
    below.start()
    if fault == "setup":
        on_connection = below.on_connection
        failed = []

        def once(conn) -> None:
            if not failed:
                failed.append(conn)
                raise RuntimeError("a bug in the session's setup")
            on_connection(conn)

        monkeypatch.setattr(below, "on_connection", once)
    else:
        publish_namespace = MoqSession.publish_namespace
        calls = []

        def once(self, *args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("a bug while announcing")
            return publish_namespace(self, *args, **kwargs)

        monkeypatch.setattr(MoqSession, "publish_namespace", once)
    host, port = node.moq_address
    link = UpstreamLink(below, f"moqt://{host}:{port}", insecure=True, backend=node.moq_config.backend,
                        announce=True, use_for_unknown_tracks=False)
    link.start()
    try:
        registry.publish("live/x")
        await until(lambda: "live/x" in node.moq.published_names(), 15, "live/x announced to the node above")
        published = node.moq.published_names()
    finally:
        await link.close()
        below.stop()
        await node.close()
    return [r.getMessage() for r in caplog.records if r.name == "rtmpq.nodes"], published


async def test_a_fault_while_setting_up_the_upstream_session_is_logged_and_the_link_reconnects(
        tmp_path, monkeypatch, caplog):
    messages, published = await linked(tmp_path, monkeypatch, caplog, "setup")
    assert "live/x" in published  # main: the link's task ended at the fault, nothing was announced
    assert [m for m in messages if "the link failed; reconnecting" in m], messages


async def test_a_fault_while_announcing_is_logged_and_the_broadcast_announced_on_a_new_session(
        tmp_path, monkeypatch, caplog):
    messages, published = await linked(tmp_path, monkeypatch, caplog, "announce")
    assert "live/x" in published  # main: the announcer died unseen, live/x never reached the node above
    assert [m for m in messages if "announcing broadcasts failed; reconnecting" in m], messages
