"""MoQT byte samples encoded by rtmpq's own encoders: seeds for the moq_* fuzz targets."""

from rtmpq.moq import wire as w


def samples() -> dict[str, bytes]:
    ns = (b"live", b"cap")
    auth = w.auth_token_param("secret-token")
    control = {
        "client-setup": w.ClientSetup({w.SETUP_PATH: b"/moq", w.SETUP_MAX_REQUEST_ID: 100,
                                       w.SETUP_IMPLEMENTATION: b"rtmpq"}),
        "server-setup": w.ServerSetup({w.SETUP_MAX_REQUEST_ID: 64}),
        "goaway": w.Goaway("https://relay.example/moq"),
        "max-request-id": w.MaxRequestId(200),
        "subscribe": w.Subscribe(2, ns, b"video", {w.PARAM_SUBSCRIBER_PRIORITY: 128, w.PARAM_GROUP_ORDER: 1,
                                                   w.PARAM_FORWARD: 1, w.PARAM_AUTHORIZATION_TOKEN: auth,
                                                   w.PARAM_SUBSCRIPTION_FILTER:
                                                       w.encode_filter(w.FILTER_LARGEST_OBJECT)}),
        "subscribe-ok": w.SubscribeOk(2, 7, {w.PARAM_EXPIRES: 0}, {}),
        "publish-done": w.PublishDone(2, 0, 3, "publisher left"),
        "request-error": w.RequestErrorMessage(4, 0x10, 0, "no such track"),
        "publish-namespace": w.PublishNamespace(6, ns),
        "subscribe-namespace": w.SubscribeNamespace(8, (b"live",)),
        "unsubscribe": w.Unsubscribe(2),
        "fetch-standalone": w.Fetch(10, w.FETCH_STANDALONE, ns, b"video", (3, 0), (5, 0)),
        "fetch-ok": w.FetchOk(10, False, (4, 12)),
    }
    out = {}
    for name, msg in control.items():
        out[name] = w.encode_control_message(msg)
    sub = bytearray(w.SubgroupHeader(7, 3).encode())
    for i, payload in enumerate((b"\x00" * 40, b"frame-1", b"")):
        sub += w.encode_object(0 if i == 0 else 0, payload, {0x06: 1, 0x0B: b"loc"} if i == 0 else None,
                               with_extensions=True, status=3 if not payload else 0) + payload
    out["subgroup-objects"] = bytes(sub)
    plain = w.SubgroupHeader(7, 9, subgroup_id=2, priority=None, extensions=False, end_of_group=False).encode()
    out["subgroup-plain"] = plain + w.encode_object(0, b"abc", None, with_extensions=False) + b"abc"
    enc = w.FetchObjectEncoder()
    fetch = bytearray(w.encode_fetch_header(5))
    for g, o, payload in ((1, 0, b"key"), (1, 1, b"p1"), (1, 2, b"p2"), (2, 0, b"key2")):
        fetch += enc.object_header(g, 0, o, 128, len(payload), {0x06: 2} if o == 0 else None) + payload
    fetch += enc.end_of_range(4, 0, unknown=True)
    fetch += enc.object_header(5, 1, 0, 64, 3, None) + b"xyz"
    out["fetch-objects"] = bytes(fetch)
    return out


def datagram_samples() -> dict[str, bytes]:
    """OBJECT_DATAGRAMs of one track in a row, each after a byte giving its length (the moq_datagram
    target's input): every type bit, a gap, a duplicate, an older group, END_OF_GROUP."""
    dgrams = {
        "datagrams-in-order": [w.encode_object_datagram(7, 1, 0, b"key", {0x06: 1}, priority=128),
                               w.encode_object_datagram(7, 1, 1, b"p1"),
                               w.encode_object_datagram(7, 1, 2, b"p2", end_of_group=True),
                               w.encode_object_datagram(7, 2, 0, b"", status=w.ObjectStatus.END_OF_GROUP)],
        "datagrams-reordered": [w.encode_object_datagram(7, 3, 2, b"late", priority=1),
                                w.encode_object_datagram(7, 3, 1, b"early"),
                                w.encode_object_datagram(7, 3, 2, b"again"),
                                w.encode_object_datagram(7, 2, 5, b"old group"),
                                w.encode_object_datagram(9, 4, 0, b"other track", {0x0B: b"loc"}, end_of_group=True)],
    }
    return {name: b"".join(bytes((len(d),)) + d for d in ds) for name, ds in dgrams.items()}
