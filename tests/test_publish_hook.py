"""[publish] hook_url: the operator's own service decides who publishes, and under which name."""

import asyncio
import json
import logging

import pytest

from rtmpq.auth.access import AccessDenied
from rtmpq.auth.hook import hook_name
from rtmpq.config import Config, ConfigError, PublishConfig, load_config, reload_settings

from .conftest import http_get, need, start_up_node, until
from .publishers import drop_publish, ffmpeg_publish_only_args, run_process
from .rtmp_client import TcpPublisher
from .test_ops import samples

GOOD, BAD, SLOW, ODD = "sk-good-4f1a", "sk-bad-99c0", "sk-slow-7e21", "sk-odd-02bb"


def test_what_an_answer_means():
    assert hook_name(200, b'{"name": "studio"}', "live") == "live/studio"
    assert hook_name(201, b'{"name": "news/desk"}', "live") == "news/desk"
    for status, body, said in ((403, b'{"reason": "subscription expired"}', "refused by the publish hook: subscription expired"),
                               (404, b"<html>not found</html>", "refused by the publish hook (HTTP 404)"),
                               (500, b'{"reason": "\\u0007bell"}', "refused by the publish hook (HTTP 500)"),
                               (200, b"", 'without a "name"'), (200, b"[1]", 'without a "name"'),
                               (200, b'{"name": "../x"}', "not a broadcast name"),
                               (200, b'{"name": "a/b/c"}', "not a broadcast name")):
        with pytest.raises(AccessDenied, match=said.replace("(", r"\(").replace(")", r"\)")):
            hook_name(status, body, "live")


def test_an_answer_nested_too_deep_for_the_json_reader_is_not_an_answer():
    """Found with the publish_hook fuzz target: json.loads raises RecursionError, not ValueError, on
    arrays nested a few thousand deep; it escaped hook_name, the task asking the hook died and the
    publish was never answered (the connection closed 10 s later: "no publish within 10 s")."""
    for status, said in ((200, 'without a "name"'), (403, r"refused by the publish hook \(HTTP 403\)")):
        for body in (b"[" * 5000, b'{"name": ' * 3000):
            with pytest.raises(AccessDenied, match=said):
                hook_name(status, body, "live")


async def test_a_publish_whose_hook_answers_json_nested_too_deep_is_refused_at_once(tmp_path):
    need("ffmpeg")

    async def handle(reader, writer) -> None:
        await read_post(reader)
        data = b'{"name": ' + b"[" * 20_000  # within the 64 KiB an answer is read up to
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    publish = PublishConfig(hook_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/on_publish",
                            hook_timeout=2.0, grace_period=0.0)
    node = await start_up_node(tmp_path, publish=publish)
    try:
        rc, out = await run_process(ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/sk-1", 2),
                                    timeout=15)  # before the fix: never answered, ffmpeg waits for good
        assert rc != 0 and 'the publish hook answered without a "name"' in out, out
    finally:
        await node.close()
        server.close()


def test_the_setting_is_checked_and_masked():
    with pytest.raises(ConfigError, match="publish.hook_url: expected an http"):
        load_config(None, env={"RTMPQ_PUBLISH_HOOK_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="publish.hook_timeout: must be positive and below the RTMP handshake"):
        load_config(None, env={"RTMPQ_PUBLISH_HOOK_URL": "http://x", "RTMPQ_PUBLISH_HOOK_TIMEOUT": "0"})
    from rtmpq.config import show

    config = load_config(None, env={"RTMPQ_PUBLISH_HOOK_URL": "https://u:pw@auth.example/hook?t=1"})
    assert "pw" not in show(config) and "t=1" not in show(config)
    assert not Config().publish.restricted and config.publish.restricted  # a hook closes the node


async def read_post(reader) -> tuple[bytes, dict]:
    """An HTTP request's head and its JSON body, as the operator's service reads them."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head, json.loads(await reader.readexactly(length))


class Backend:
    """The operator's service: answers by key, records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict] = []
        self.headers: list[bytes] = []
        self.server = None

    async def handle(self, reader, writer) -> None:
        head, ask = await read_post(reader)
        self.asked.append(ask)
        self.headers.append(head)
        status, body = {GOOD: (200, {"name": "studio"}), BAD: (403, {"reason": "subscription expired"}),
                        ODD: (200, {"nom": "x"})}.get(ask["key"], (200, {"name": "other"}))
        if ask["key"] == SLOW:
            await asyncio.sleep(5)
        data = json.dumps(body).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, len(data), data))
        await writer.drain()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


async def test_the_hook_admits_names_and_refuses_with_its_reason_and_no_answer_is_no(tmp_path, caplog):
    need("ffmpeg")
    caplog.set_level(logging.INFO, logger="rtmpq")
    backend = Backend()
    port = await backend.start()
    publish = PublishConfig(keys={"sk-static-1": "fixed"}, hook_url=f"http://op:pa55@127.0.0.1:{port}/on_publish?x=1",
                            hook_timeout=1.0, grace_period=0.0)
    node = await start_up_node(tmp_path, publish=publish)
    rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
    good = None
    try:
        good = asyncio.ensure_future(run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}", 60), timeout=90))
        await until(lambda: "live/studio" in node.rtmp.publishes, 30, "the hook's name live/studio published")
        assert backend.asked[0] == {"app": "live", "key": GOOD, "query": "", "address": "127.0.0.1"}
        assert b"authorization: basic " in backend.headers[0].lower()  # op:pa55 from the URL
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{BAD}", 2))
        assert rc != 0 and "refused by the publish hook: subscription expired" in out, out
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{SLOW}", 2))
        assert rc != 0 and "the publish hook did not answer" in out, out
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{ODD}", 2))
        assert rc != 0 and "the publish hook did not answer" not in out, out
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/sk-static-1", 1))  # keys: no question asked
        assert rc == 0, out
        assert [a["key"] for a in backend.asked] == [GOOD, BAD, SLOW, ODD]
        # a reload does not undo the hook's decision (it is not asked again)
        reload_settings(node.config, Config(publish=PublishConfig(keys={"sk-static-1": "fixed"},
                                                                  hook_url=publish.hook_url, hook_timeout=2.0)))
        node.rtmp.recheck_publishes()
        assert "live/studio" in node.rtmp.publishes and not good.done()
        backend.server.close()
        await backend.server.wait_closed()
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}-again", 2))  # the service is down
        assert rc != 0 and "the publish hook did not answer" in out, out
        _, page = await http_get(f"http://127.0.0.1:{node.edge.http.address[1]}/metrics")
        counted = {dict(labels)["reason"]: value for (name, labels), value in samples(page.decode()).items()
                   if name == "rtmpq_errors_total" and dict(labels).get("protocol") == "rtmp"}
        assert counted == {"hook_refused": 1, "hook_failed": 1, "hook_unavailable": 2}, counted
    finally:
        if good is not None:
            await drop_publish(good)
        await node.close()
        backend.server.close()
    text = caplog.text
    assert "no answer within 1 s ([publish] hook_timeout)" in text and "cannot connect" in text
    assert 'answered without a "name"' in text
    assert "pa55" not in text and "x=1" not in text  # the URL's credentials and query are not logged
    assert not any(key in text for key in (GOOD, BAD, SLOW, ODD))  # nor the keys



async def test_an_https_hook_is_checked_against_hook_cafile(tmp_path, caplog):
    import ssl

    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.nodes.ingest import IngestNode

    need("ffmpeg")
    cert, key = ensure_self_signed(tmp_path / "tls")  # the service's own certificate, its own CA
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    backend = Backend()
    backend.server = await asyncio.start_server(backend.handle, "127.0.0.1", 0, ssl=tls)
    url = f"https://127.0.0.1:{backend.server.sockets[0].getsockname()[1]}/on_publish"
    with pytest.raises(ConfigError, match="publish.hook_cafile: cannot load"):
        IngestNode(None, publish=PublishConfig(hook_url=url, hook_cafile=tmp_path / "missing.pem"))
    node = await start_up_node(tmp_path, publish=PublishConfig(hook_url=url, hook_cafile=cert, grace_period=0.0))
    rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
    try:
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}", 1))
        assert rc == 0, out  # verified against hook_cafile
        node.rtmp.hook_tls = None  # the system's CAs, which do not know the service's certificate
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}", 1))
        assert rc != 0 and "the publish hook did not answer" in out, out
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate verify failed" in caplog.text
    finally:
        await node.close()
        backend.server.close()


async def test_a_hook_ca_renewed_in_place_is_read_again_on_sighup(tmp_path, caplog):
    """The service's CA file replaced at the same path: SIGHUP makes the node verify against it
    (before, the file was read at start only); a file that cannot be loaded keeps the CA in use."""
    import ssl

    from rtmpq.moq.tls import ensure_self_signed

    need("ffmpeg")
    cert, key = ensure_self_signed(tmp_path / "tls")  # the service's certificate
    other, _ = ensure_self_signed(tmp_path / "other")  # a CA that does not know it
    cafile = tmp_path / "hook-ca.pem"
    cafile.write_bytes(other.read_bytes())
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    backend = Backend()
    backend.server = await asyncio.start_server(backend.handle, "127.0.0.1", 0, ssl=tls)
    url = f"https://127.0.0.1:{backend.server.sockets[0].getsockname()[1]}/on_publish"
    node = await start_up_node(tmp_path, publish=PublishConfig(hook_url=url, hook_cafile=cafile, grace_period=0.0))
    rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
    try:
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}", 1))
        assert rc != 0 and "the publish hook did not answer" in out, out  # the wrong CA
        cafile.write_bytes(cert.read_bytes())  # the operator renews the CA in place, then SIGHUP
        node.rtmp.settings_reloaded()
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}", 1))
        assert rc == 0, out
        cafile.write_text("not a certificate")
        node.rtmp.settings_reloaded()
        assert "publish.hook_cafile: cannot load" in caplog.text and "the hook's CA in use stays" in caplog.text
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{GOOD}", 1))
        assert rc == 0, out  # the CA that loaded last still verifies the service
    finally:
        await node.close()
        backend.server.close()


async def test_guesses_sent_at_once_reach_the_hook_no_more_than_the_refusal_limit(tmp_path):
    """A refusal counts when the hook answers: 25 guesses from one address sent at once reached the
    hook 25 times (max_refused_publishes 10, hundreds with more connections). Now at most the limit
    is awaited at a time; the others are refused at once, and the address then cools down."""
    asked: list[str] = []
    every_guess_in = asyncio.Event()  # each guess asked of the hook or refused: now it may answer

    async def slow_no(reader, writer) -> None:
        _, ask = await read_post(reader)
        asked.append(ask["key"])
        await every_guess_in.wait()
        writer.write(b"HTTP/1.1 403 X\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    hook = await asyncio.start_server(slow_no, "127.0.0.1", 0)
    publish = PublishConfig(keys={"sk-static-1": "fixed"},
                            hook_url=f"http://127.0.0.1:{hook.sockets[0].getsockname()[1]}/", hook_timeout=5.0)
    node = await start_up_node(tmp_path, publish=publish)
    try:
        async def guess(i: int) -> str:
            with pytest.raises(ConnectionRefusedError) as info:
                await TcpPublisher.publish(node.rtmp.address[1], f"guess-{i}", source="127.0.0.9")
            return str(info.value)

        guesses = [asyncio.create_task(guess(i)) for i in range(25)]
        await until(lambda: len(asked) + sum(g.done() for g in guesses) >= 25, 10, "every guess asked or refused")
        every_guess_in.set()
        answers = await asyncio.gather(*guesses)
        assert len(asked) == 10, asked
        assert sum("await the publish hook" in a for a in answers) == 15, answers
        assert "too many refused publishes" in await guess(99)  # the ten refused: cooling down
        assert len(asked) == 10
    finally:
        await node.close()
        hook.close()
