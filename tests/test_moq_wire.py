"""MoQT draft-16 wire codec: hand-written bytes from the draft's layouts, round trips, hostile input."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpq.codec.sentinel import NEED_DATA
from rtmpq.errors import LimitExceeded
from rtmpq.moq import wire
from rtmpq.moq.wire import MoqProtocolError


@pytest.mark.parametrize("value,encoded", [(37, b"\x25"), (15293, b"\x7b\xbd"), (494878333, b"\x9d\x7f\x3e\x7d"),
                                           (151288809941952652, b"\xc2\x19\x7c\x5e\xff\x14\xe8\x8c")])
def test_varints_from_rfc9000(value, encoded):
    assert wire.encode_varint(value) == encoded
    assert wire.decode_varint(encoded, 0) == (value, len(encoded))
    assert wire.decode_varint(encoded[:-1], 0) is NEED_DATA


def test_subscribe_written_by_hand_from_the_draft():
    # SUBSCRIBE: type 0x3, length (16), request id 2, namespace ("live","cam"), name "video",
    # 1 parameter: SUBSCRIBER_PRIORITY (0x20, even: a varint) = 5
    payload = b"\x02" + b"\x02\x04live\x03cam" + b"\x05video" + b"\x01\x20\x05"
    data = b"\x03" + len(payload).to_bytes(2, "big") + payload
    msg, end = wire.decode_control_message(data)
    assert end == len(data)
    assert msg == wire.Subscribe(2, (b"live", b"cam"), b"video", {0x20: 5})
    assert wire.encode_control_message(msg) == data


def test_parameters_are_delta_encoded_and_odd_types_carry_bytes():
    params = {wire.PARAM_DELIVERY_TIMEOUT: 1000, wire.PARAM_SUBSCRIPTION_FILTER: wire.encode_filter(wire.FILTER_LARGEST_OBJECT)}
    msg = wire.Subscribe(0, (b"a",), b"t", params)
    data = wire.encode_control_message(msg)
    assert b"\x02\x02\x43\xe8\x1f\x01\x02" in data  # type 2 = 1000, then type 2+0x1f = 0x21 with 1 byte
    assert wire.decode_control_message(data)[0] == msg


def test_request_update_with_a_filter_and_publish_done_update_failed_written_by_hand():
    # REQUEST_UPDATE: type 0x2, length (16), request id 4, existing request id 2, 1 parameter:
    # SUBSCRIPTION_FILTER (0x21, odd: length-prefixed) = AbsoluteRange (4), Start {3, 1}, End Group 7
    payload = b"\x04\x02" + b"\x01\x21\x04" + b"\x04\x03\x01\x07"
    data = b"\x02" + len(payload).to_bytes(2, "big") + payload
    msg, _ = wire.decode_control_message(data)
    assert msg == wire.RequestUpdate(4, 2, {wire.PARAM_SUBSCRIPTION_FILTER: b"\x04\x03\x01\x07"})
    assert wire.decode_filter(msg.params[wire.PARAM_SUBSCRIPTION_FILTER]) == (wire.FILTER_ABSOLUTE_RANGE, (3, 1), 7)
    assert wire.encode_filter(wire.FILTER_ABSOLUTE_RANGE, (3, 1), 7) == b"\x04\x03\x01\x07"
    # PUBLISH_DONE: type 0xB, request id 2, Status Code UPDATE_FAILED (0x8), Stream Count 3, reason "x"
    payload = b"\x02\x08\x03\x01x"
    done = b"\x0b" + len(payload).to_bytes(2, "big") + payload
    assert wire.encode_control_message(wire.PublishDone(2, wire.PublishDoneStatus.UPDATE_FAILED, 3, "x")) == done


@pytest.mark.parametrize("msg", [
    wire.ClientSetup({wire.SETUP_MAX_REQUEST_ID: 100, wire.SETUP_PATH: b"/live"}),
    wire.ServerSetup({wire.SETUP_MAX_REQUEST_ID: 7}),
    wire.Goaway("moqt://other:4443/"),
    wire.MaxRequestId(42),
    wire.RequestOk(3, {wire.PARAM_LARGEST_OBJECT: wire.encode_location(5, 9)}),
    wire.RequestErrorMessage(4, wire.RequestError.DOES_NOT_EXIST, 0, "no such broadcast"),
    wire.SubscribeOk(2, 0, {wire.PARAM_LARGEST_OBJECT: wire.encode_location(1, 2)}, {0x0E: 3}),
    wire.Publish(6, (b"live",), b"video", 9, {}, {}),
    wire.PublishOk(6),
    wire.Unsubscribe(2),
    wire.PublishDone(2, wire.PublishDoneStatus.TRACK_ENDED, 17, "bye"),
    wire.PublishNamespace(0, (b"live", b"cam")),
    wire.PublishNamespaceDone(0),
    wire.SubscribeNamespace(2, (b"live",), wire.NAMESPACE_OPTION_NAMESPACE),
    wire.Namespace((b"cam",)),
    wire.NamespaceDoneMessage((b"cam",)),
    wire.TrackStatus(8, (b"live", b"cam"), b"video"),
    wire.Fetch(10, wire.FETCH_STANDALONE, (b"live", b"cam"), b"video", (3, 0), (5, 0),
               params={wire.PARAM_GROUP_ORDER: wire.GROUP_ORDER_DESCENDING}),
    wire.Fetch(12, wire.FETCH_RELATIVE_JOINING, joining_request_id=10, joining_start=2),
    wire.Fetch(14, wire.FETCH_ABSOLUTE_JOINING, joining_request_id=10, joining_start=7),
    wire.FetchOk(10, True, (5, 1), {}, {0x0E: 3}),
    wire.FetchCancel(10),
])
def test_round_trip_and_truncation_at_every_offset(msg):
    data = wire.encode_control_message(msg)
    assert wire.decode_control_message(data) == (msg, len(data))
    for i in range(len(data)):
        assert wire.decode_control_message(data[:i]) is NEED_DATA


def test_malformed_messages_close_with_the_drafts_codes():
    with pytest.raises(MoqProtocolError) as info:
        wire.decode_control_message(b"\x3f\x00\x00")  # unknown type
    assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION
    with pytest.raises(MoqProtocolError):  # a length that leaves bytes over
        wire.decode_control_message(b"\x0a\x00\x02\x01\x01")
    with pytest.raises(MoqProtocolError):  # unknown message parameter
        wire.decode_control_message(wire.encode_control_message(wire.Subscribe(0, (b"a",), b"t", {0x7C: 1})))
    ns = tuple(b"x" for _ in range(33))
    with pytest.raises(MoqProtocolError):  # more than 32 namespace fields
        wire.decode_control_message(wire.encode_control_message(wire.PublishNamespace(0, ns)))


def subgroup_stream(objects, **header):
    h = wire.SubgroupHeader(track_alias=3, group_id=7, **header)
    out = h.encode()
    last = None
    for oid, payload, ext in objects:
        delta = oid if last is None else oid - last - 1
        out += wire.encode_object(delta, payload, ext, with_extensions=h.extensions) + payload
        last = oid
    return h, out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.dictionaries(st.integers(0, 200).map(lambda k: k * 2),
                                                                              st.integers(0, 2**40), max_size=3)),
                min_size=1, max_size=8),
       st.lists(st.integers(1, 4000), max_size=6), st.booleans())
def test_subgroup_parser_byte_splits_do_not_matter(objs, cuts, explicit_subgroup):
    objects = [(i * 2, p, e) for i, (p, e) in enumerate(objs)]
    header, data = subgroup_stream(objects, subgroup_id=5 if explicit_subgroup else 0, priority=9)
    parser = wire.SubgroupStreamParser()
    out = []
    pos = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += parser.feed(data[pos:cut])
        pos = cut
    assert out[0] == header
    assert [(o.object_id, o.payload, o.extensions) for o in out[1:]] == objects
    assert parser.buffered == 0


@pytest.mark.parametrize(("first", "subgroup"), [(0, 0), (5, 5)])
def test_a_subgroup_id_taken_from_the_first_object_stays_that_objects_id(first, subgroup):
    # SUBGROUP_ID_MODE 0b01 (type 0x12): the subgroup ID is the first object's ID (draft 16, "Subgroup Header")
    data = wire.encode_varint(0x12) + wire.encode_varint(3) + wire.encode_varint(7) + b"\x09"
    for delta in (first, 0, 0):  # objects first, first + 1, first + 2
        data += wire.encode_object(delta, b"x", {}, with_extensions=False) + b"x"
    parser = wire.SubgroupStreamParser()
    objects = [item for item in parser.feed(data) if isinstance(item, wire.SubgroupObject)]
    assert [o.object_id for o in objects] == [first, first + 1, first + 2]
    assert parser.header.subgroup_id == subgroup


def _status_stream(status: int, extensions: dict | None = None) -> bytes:
    """A subgroup stream (extension blocks on) with object 0 and then a status object (object 1)."""
    header = wire.SubgroupHeader(track_alias=3, group_id=7, extensions=True)
    return (header.encode() + wire.encode_object(0, b"x", None, with_extensions=True) + b"x"
            + wire.encode_object(0, b"", extensions, with_extensions=True, status=status))


@pytest.mark.parametrize("status", list(wire.ObjectStatus))
def test_object_status_is_parsed_with_an_empty_payload(status):
    # draft 16, "Object Status": 0x0 Normal (an empty object), 0x3 End of Group, 0x4 End of Track
    items = wire.SubgroupStreamParser().feed(_status_stream(status))
    objects = [i for i in items if isinstance(i, wire.SubgroupObject)]
    assert [(o.object_id, bytes(o.payload), o.status) for o in objects] == [(0, b"x", 0), (1, b"", status)]


@pytest.mark.parametrize("status", [0x1, 0x2, 0x5, 0x40])
def test_an_unknown_object_status_closes_the_session(status):
    # "Any other value SHOULD be treated as a protocol error" (PROTOCOL_VIOLATION)
    with pytest.raises(MoqProtocolError, match="object status") as info:
        wire.SubgroupStreamParser().feed(_status_stream(status))
    assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION


@pytest.mark.parametrize("status", [wire.ObjectStatus.END_OF_GROUP, wire.ObjectStatus.END_OF_TRACK])
def test_extension_headers_on_a_status_object_close_the_session(status):
    # "Object Extension Headers": extensions on an object whose status is not Normal MUST close
    # the session with PROTOCOL_VIOLATION; on an empty Normal object they are fine
    with pytest.raises(MoqProtocolError, match="extension headers") as info:
        wire.SubgroupStreamParser().feed(_status_stream(status, {0x3C: 7}))
    assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION
    objects = [i for i in wire.SubgroupStreamParser().feed(_status_stream(wire.ObjectStatus.NORMAL, {0x3C: 7}))
               if isinstance(i, wire.SubgroupObject)]
    assert objects[-1].extensions == {0x3C: 7} and objects[-1].status == wire.ObjectStatus.NORMAL


@pytest.mark.parametrize("kind", [0x16, 0x17, 0x1E, 0x3F, 0x40, 0x05, 0x00])
def test_invalid_subgroup_header_types(kind):
    with pytest.raises(MoqProtocolError):
        wire.SubgroupStreamParser().feed(wire.encode_varint(kind) + b"\x01\x01\x80")


@pytest.mark.parametrize(("body", "problem"), [
    (b"\x00\x04", "fetch type"),
    (b"\x00\x01\x01\x01a\x01t\x00\x00\x01\x00\x01\x22\x03", "GROUP_ORDER"),  # GROUP_ORDER 3
])
def test_malformed_fetch_closes_the_session(body, problem):
    with pytest.raises(MoqProtocolError, match=problem):
        wire.decode_control_message(wire.encode_varint(wire.MessageType.FETCH) + len(body).to_bytes(2, "big") + body)


def fetch_stream(items):
    encoder = wire.FetchObjectEncoder()
    out = bytearray(wire.encode_fetch_header(9))
    for item in items:
        if isinstance(item, wire.FetchRangeEnd):
            out += encoder.end_of_range(item.group_id, item.object_id, unknown=item.unknown)
        else:
            out += encoder.object_header(item.group_id, item.subgroup_id, item.object_id, item.priority,
                                         len(item.payload), item.extensions) + item.payload
    return bytes(out)


fetch_objects = st.lists(st.one_of(
    st.builds(wire.FetchObject, st.integers(0, 5), st.integers(0, 3), st.integers(0, 5), st.integers(0, 255),
              st.binary(max_size=200), st.dictionaries(st.integers(0, 50).map(lambda k: k * 2), st.integers(0, 2**30),
                                                       max_size=2)),
    st.builds(wire.FetchRangeEnd, st.integers(0, 5), st.integers(0, 5), st.booleans())), min_size=1, max_size=10)


@settings(max_examples=80, deadline=None)
@given(fetch_objects, st.lists(st.integers(1, 3000), max_size=6))
def test_fetch_stream_round_trips_whatever_the_byte_splits(items, cuts):
    data = fetch_stream(items)
    parser = wire.FetchStreamParser()
    out = []
    pos = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += parser.feed(data[pos:cut])
        pos = cut
    assert parser.request_id == 9 and parser.buffered == 0
    assert out == items


def test_fetch_objects_leave_out_what_repeats_the_prior_one():
    encoder = wire.FetchObjectEncoder()
    first = encoder.object_header(4, 0, 0, 128, 10, None)
    second = encoder.object_header(4, 0, 1, 128, 10, None)
    assert first[0] == 0x08 | 0x04 | 0x10  # group, object id and priority stated
    assert second == b"\x00\x0a"  # nothing but the flags and the payload length


def test_a_first_fetch_object_cannot_refer_to_a_prior_one():
    with pytest.raises(MoqProtocolError, match="prior object"):
        wire.FetchStreamParser().feed(wire.encode_fetch_header(1) + b"\x00\x00")
    with pytest.raises(MoqProtocolError):  # serialization flags that are neither flags nor a marker
        wire.FetchStreamParser().feed(wire.encode_fetch_header(1) + wire.encode_varint(0x90))


def test_picoquic_priorities_put_urgency_first_then_the_newest_group():
    from rtmpq.moq.transport import pquic_priority

    order = [pquic_priority(u, newest=n) for u in range(4) for n in (True, False)]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert all(p % 2 == 0 for p in order)  # even: round robin among equal priorities (picoquic)


# -- AUTHORIZATION TOKEN ------------------------------------------------------------------------
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsaXZlIn0.c2lnbmF0dXJl"


def test_authorization_token_written_by_hand_from_the_draft():
    # Token { Alias Type (i) = USE_VALUE 3, Token Type (i) = 0, Token Value (..) = the rest }
    assert wire.auth_token_param(JWT) == b"\x03\x00" + JWT.encode()
    # SUBSCRIBE with SUBSCRIBER_PRIORITY and AUTHORIZATION TOKEN: types 0x03 then 0x20 (delta 0x1d)
    msg = wire.Subscribe(2, (b"live",), b"video", {wire.PARAM_SUBSCRIBER_PRIORITY: 128,
                                                  wire.PARAM_AUTHORIZATION_TOKEN: wire.auth_token_param("tok")})
    params = b"\x02" + b"\x03\x05\x03\x00tok" + b"\x1d\x40\x80"
    assert wire.encode_control_message(msg).endswith(params)
    # REGISTER (alias 7, type 0, value) / USE_ALIAS 7 / DELETE 7
    token = wire.AuthToken(wire.AuthAliasType.REGISTER, 7, 0, b"s3cret")
    assert token.encode() == b"\x01\x07\x00s3cret" and wire.decode_auth_token(b"\x01\x07\x00s3cret") == token
    assert wire.decode_auth_token(b"\x02\x07") == wire.AuthToken(wire.AuthAliasType.USE_ALIAS, 7)
    assert wire.decode_auth_token(b"\x00\x07") == wire.AuthToken(wire.AuthAliasType.DELETE, 7)
    assert wire.AuthToken(wire.AuthAliasType.DELETE, 7).encode() == b"\x00\x07"
    assert "s3cret" not in repr(token)  # a token is a secret


TOKEN = {wire.PARAM_AUTHORIZATION_TOKEN: wire.auth_token_param(JWT)}


@pytest.mark.parametrize("msg", [
    wire.ClientSetup({wire.SETUP_MAX_REQUEST_ID: 100, wire.SETUP_AUTHORIZATION_TOKEN: wire.auth_token_param(JWT),
                      wire.SETUP_MAX_AUTH_TOKEN_CACHE_SIZE: 8192}),
    wire.Subscribe(2, (b"live", b"cam"), b"video", {wire.PARAM_SUBSCRIBER_PRIORITY: 1, **TOKEN}),
    wire.Fetch(10, wire.FETCH_STANDALONE, (b"live", b"cam"), b"video", (3, 0), (5, 0), params=dict(TOKEN)),
    wire.Fetch(12, wire.FETCH_RELATIVE_JOINING, joining_request_id=10, joining_start=2, params=dict(TOKEN)),
    wire.SubscribeNamespace(2, (b"live",), wire.NAMESPACE_OPTION_NAMESPACE, dict(TOKEN)),
    wire.SubscribeNamespace(4, (), wire.NAMESPACE_OPTION_BOTH, dict(TOKEN)),
    wire.PublishNamespace(0, (b"live", b"cam"), dict(TOKEN)),
    wire.Publish(6, (b"live",), b"video", 9, dict(TOKEN), {}),
    wire.TrackStatus(8, (b"live", b"cam"), b"video", dict(TOKEN)),
    # repeated tokens (the draft allows them): a tuple of values
    wire.Subscribe(2, (b"live",), b"video", {wire.PARAM_AUTHORIZATION_TOKEN: (
        wire.auth_token_param(JWT), wire.AuthToken(wire.AuthAliasType.REGISTER, 1, 0, b"other").encode())}),
])
def test_messages_carry_a_token_through_a_round_trip(msg):
    data = wire.encode_control_message(msg)
    assert wire.decode_control_message(data) == (msg, len(data))
    for i in range(len(data)):
        assert wire.decode_control_message(data[:i]) is NEED_DATA
    kind = wire.SETUP_AUTHORIZATION_TOKEN if isinstance(msg, wire.ClientSetup) else wire.PARAM_AUTHORIZATION_TOKEN
    tokens = wire.auth_tokens(msg.params, kind)
    assert tokens[0] == wire.AuthToken(wire.AuthAliasType.USE_VALUE, None, wire.TOKEN_TYPE_OUT_OF_BAND, JWT.encode())


@pytest.mark.parametrize("raw", [b"", b"\x04\x00", b"\x02", b"\x02\x01\x00", b"\x00\x01tail", b"\x01\x01", b"\x03",
                                 b"\x40"])
def test_undecodable_tokens_are_key_value_formatting_errors(raw):
    with pytest.raises(MoqProtocolError) as info:
        wire.decode_auth_token(raw)
    assert info.value.code == wire.SessionError.KEY_VALUE_FORMATTING_ERROR


def test_a_token_over_the_byte_limit_is_refused_both_ways():
    big = "x" * (wire.MAX_AUTH_TOKEN_BYTES + 1)
    wire.decode_auth_token(wire.auth_token_param(big[:-1]))  # exactly at the limit is fine
    with pytest.raises(ValueError, match="MAX_AUTH_TOKEN_BYTES"):
        wire.auth_token_param(big)
    raw = wire.AuthToken(wire.AuthAliasType.USE_VALUE, None, 0, big.encode()).encode()
    with pytest.raises(MoqProtocolError) as info:
        wire.decode_auth_token(raw)
    assert info.value.code == wire.SessionError.MALFORMED_AUTH_TOKEN
    assert isinstance(info.value, LimitExceeded) and info.value.limit == "MAX_AUTH_TOKEN_BYTES"
    assert "MAX_AUTH_TOKEN_BYTES" in str(info.value) and "xxxx" not in str(info.value)


# -- draft 16 audit: what a third-party peer writes or expects ------------------------------------
def test_error_codes_are_the_drafts_iana_tables():
    """Every code of draft 16's IANA tables (Session Termination, REQUEST_ERROR, PUBLISH_DONE, Data
    Stream Reset) by name and value; INVALID_AUTHORITY, MALFORMED_AUTHORITY, MALFORMED_TRACK,
    DUPLICATE_SUBSCRIPTION, UNINTERESTED and PREFIX_OVERLAP were missing."""
    session = {"NO_ERROR": 0x0, "INTERNAL_ERROR": 0x1, "UNAUTHORIZED": 0x2, "PROTOCOL_VIOLATION": 0x3,
               "INVALID_REQUEST_ID": 0x4, "DUPLICATE_TRACK_ALIAS": 0x5, "KEY_VALUE_FORMATTING_ERROR": 0x6,
               "TOO_MANY_REQUESTS": 0x7, "INVALID_PATH": 0x8, "MALFORMED_PATH": 0x9, "GOAWAY_TIMEOUT": 0x10,
               "CONTROL_MESSAGE_TIMEOUT": 0x11, "DATA_STREAM_TIMEOUT": 0x12, "AUTH_TOKEN_CACHE_OVERFLOW": 0x13,
               "DUPLICATE_AUTH_TOKEN_ALIAS": 0x14, "VERSION_NEGOTIATION_FAILED": 0x15, "MALFORMED_AUTH_TOKEN": 0x16,
               "UNKNOWN_AUTH_TOKEN_ALIAS": 0x17, "EXPIRED_AUTH_TOKEN": 0x18, "INVALID_AUTHORITY": 0x19,
               "MALFORMED_AUTHORITY": 0x1A}
    request = {"INTERNAL_ERROR": 0x0, "UNAUTHORIZED": 0x1, "TIMEOUT": 0x2, "NOT_SUPPORTED": 0x3,
               "MALFORMED_AUTH_TOKEN": 0x4, "EXPIRED_AUTH_TOKEN": 0x5, "DOES_NOT_EXIST": 0x10, "INVALID_RANGE": 0x11,
               "MALFORMED_TRACK": 0x12, "DUPLICATE_SUBSCRIPTION": 0x19, "UNINTERESTED": 0x20, "PREFIX_OVERLAP": 0x30,
               "INVALID_JOINING_REQUEST_ID": 0x32}
    done = {"INTERNAL_ERROR": 0x0, "UNAUTHORIZED": 0x1, "TRACK_ENDED": 0x2, "SUBSCRIPTION_ENDED": 0x3,
            "GOING_AWAY": 0x4, "EXPIRED": 0x5, "TOO_FAR_BEHIND": 0x6, "UPDATE_FAILED": 0x8, "MALFORMED_TRACK": 0x12}
    reset = {"INTERNAL_ERROR": 0x0, "CANCELLED": 0x1, "DELIVERY_TIMEOUT": 0x2, "SESSION_CLOSED": 0x3,
             "UNKNOWN_OBJECT_STATUS": 0x4, "MALFORMED_TRACK": 0x12}
    for enum, table in ((wire.SessionError, session), (wire.RequestError, request), (wire.PublishDoneStatus, done),
                        (wire.StreamResetCode, reset)):
        assert {m.name: m.value for m in enum} == table, enum.__name__


@pytest.mark.parametrize(("params", "problem"), [
    (b"\x01\x20\x41\x00", "SUBSCRIBER_PRIORITY"),  # 256: "restricted to 0-255"
    (b"\x01\x22\x03", "GROUP_ORDER"),  # only Ascending (1) and Descending (2)
    (b"\x01\x10\x02", "FORWARD"),  # only 0 and 1
    (b"\x01\x02\x00", "DELIVERY_TIMEOUT"),  # "MUST contain a value greater than 0"
    (b"\x02\x20\x05\x00\x06", "twice"),  # SUBSCRIBER_PRIORITY repeated (delta 0): not a repeatable parameter
])
def test_out_of_range_or_repeated_message_parameters_close_the_session(params, problem):
    """Draft 16 "Message Parameters": these values MUST close the session with PROTOCOL_VIOLATION,
    and a receiver SHOULD close it on an unexpected duplicate; they were taken as they came."""
    payload = b"\x00" + b"\x01\x01a" + b"\x01t" + params  # SUBSCRIBE, request id 0, ("a",), "t"
    data = b"\x03" + len(payload).to_bytes(2, "big") + payload
    with pytest.raises(MoqProtocolError, match=problem) as info:
        wire.decode_control_message(data)
    assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION


def test_unknown_setup_parameters_may_repeat():
    # CLIENT_SETUP: 3 parameters: MAX_REQUEST_ID (2) = 8, then type 0x3C (even, unknown) twice
    payload = b"\x03" + b"\x02\x08" + b"\x3a\x01" + b"\x00\x02"
    msg, _ = wire.decode_control_message(b"\x20" + len(payload).to_bytes(2, "big") + payload)
    assert msg.params[wire.SETUP_MAX_REQUEST_ID] == 8


def test_publish_namespace_cancel_written_by_hand_from_the_draft():
    """PUBLISH_NAMESPACE_CANCEL (0xC): Request ID, Error Code, Error Reason. It was read as an
    unknown message and dropped, so a publisher never learnt its namespace was cancelled."""
    payload = b"\x04" + b"\x20" + b"\x05bored"  # request id 4, UNINTERESTED, "bored"
    data = b"\x0c" + len(payload).to_bytes(2, "big") + payload
    msg, end = wire.decode_control_message(data)
    assert end == len(data)
    assert msg == wire.PublishNamespaceCancel(4, wire.RequestError.UNINTERESTED, "bored")
    assert wire.encode_control_message(msg) == data


def test_a_fetch_object_after_a_range_marker_states_its_group_and_object_id():
    """Draft 16 "Fetch Header": a flag left unset takes the field from "the prior Object", and an
    End of Range marker is not an Object. The object after one used to leave out its group and
    object ID when they followed the marker's Location, which a peer reading "prior Object" as the
    last object serialized reads as another location."""
    encoder = wire.FetchObjectEncoder()
    encoder.object_header(4, 0, 0, 128, 1, None)
    assert encoder.end_of_range(4, 5, unknown=True) == b"\x41\x0c\x04\x05"  # End of Unknown Range to {4, 5}
    after = encoder.object_header(4, 0, 6, 128, 1, None)
    assert after == bytes((0x08 | 0x04 | 0x10,)) + b"\x04\x06\x80\x01"  # group 4, object 6, priority 128, 1 byte


@pytest.mark.parametrize(("namespace", "problem"), [
    (b"\x00", "0 fields"),  # a Track Namespace has 1 to 32 fields
    (b"\x02\x04live\x00", "empty"),  # "Each Track Namespace Field Value MUST contain at least one byte"
    (b"\x02" + (b"\x48\x01" + b"a" * 2049) * 2, "4096"),  # 2 x 2049 bytes: a Track Namespace over 4,096
])
def test_malformed_track_namespaces_close_the_session(namespace, problem):
    """Draft 16 "Track Naming": 0 fields, an empty field, or a Full Track Name over 4,096 bytes MUST
    close the session with PROTOCOL_VIOLATION; rtmpq took the first two (draft 16 audit)."""
    for payload in (b"\x00" + namespace + b"\x01t" + b"\x00",  # SUBSCRIBE, request id 0, name "t", no parameters
                    b"\x00" + namespace + b"\x00"):  # PUBLISH_NAMESPACE, request id 0, no parameters
        kind = b"\x03" if payload.endswith(b"\x01t\x00") else b"\x06"
        with pytest.raises(MoqProtocolError, match=problem) as info:
            wire.decode_control_message(kind + len(payload).to_bytes(2, "big") + payload)
        assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION


def test_a_namespace_prefix_or_suffix_may_be_empty():
    """SUBSCRIBE_NAMESPACE's prefix has "between 0 and 32" fields; a NAMESPACE suffix is what is
    left after the prefix, nothing when the namespace is the prefix (rtmpq sends that)."""
    payload = b"\x00" + b"\x00" + b"\x01" + b"\x00"  # request id 0, prefix (), options NAMESPACE, no parameters
    msg, _ = wire.decode_control_message(b"\x11" + len(payload).to_bytes(2, "big") + payload)
    assert msg == wire.SubscribeNamespace(0, (), wire.NAMESPACE_OPTION_NAMESPACE)
    assert wire.decode_control_message(b"\x08\x00\x01\x00")[0] == wire.Namespace(())


@pytest.mark.parametrize("name", ["live/", "live//show", ""])
def test_a_broadcast_name_with_an_empty_part_is_refused_before_it_is_sent(name):
    from rtmpq.moq.client import broadcast_namespace

    with pytest.raises(ValueError, match="empty part"):
        broadcast_namespace(name)
    assert broadcast_namespace("live/show") == ("live", "show")


def test_object_datagrams_written_by_hand_from_the_draft():
    """OBJECT_DATAGRAM (draft 16): type 0b00X0XXXX; EXTENSIONS 0x01, END_OF_GROUP 0x02,
    ZERO_OBJECT_ID 0x04, DEFAULT_PRIORITY 0x08, STATUS 0x20. rtmpq ignored datagrams whatever their
    bytes (draft 16 audit): now it reads them (and closes the session on the invalid ones)."""
    # type 0x01: alias 2, group 5, object 3, priority 7, extensions {0x10: 40}, payload to the end
    d = wire.decode_object_datagram(b"\x01\x02\x05\x03\x07" + b"\x02\x10\x28" + b"abcd")
    assert d == wire.ObjectDatagram(2, 5, 3, 7, {0x10: 40}, b"abcd", wire.ObjectStatus.NORMAL, False)
    # type 0x2C: STATUS | DEFAULT_PRIORITY | ZERO_OBJECT_ID: alias 2, group 5, status End of Track
    d = wire.decode_object_datagram(b"\x2c\x02\x05\x04")
    assert d == wire.ObjectDatagram(2, 5, 0, None, {}, b"", wire.ObjectStatus.END_OF_TRACK, False)
    # type 0x0E: END_OF_GROUP | ZERO_OBJECT_ID | DEFAULT_PRIORITY
    assert wire.decode_object_datagram(b"\x0e\x02\x05xy").end_of_group


def test_object_datagrams_written_read_back_as_they_were_written():
    """rtmpq writes OBJECT_DATAGRAMs now (a relay forwards datagram objects as datagrams): the
    shortest type for what each carries, byte for byte as the draft lays it out, read back whole."""
    assert wire.encode_object_datagram(2, 5, 3, b"abcd", {0x10: 40}, priority=7) == (
        b"\x01\x02\x05\x03\x07" + b"\x02\x10\x28" + b"abcd")
    assert wire.encode_object_datagram(2, 5, 0, b"", status=wire.ObjectStatus.END_OF_TRACK) == b"\x2c\x02\x05\x04"
    assert wire.encode_object_datagram(2, 5, 0, b"xy", end_of_group=True) == b"\x0e\x02\x05xy"
    for obj in [wire.ObjectDatagram(9, 300, 70000, 0, {0x11: b"v", 0x20: 5}, b"p" * 1000, 0, True),
                wire.ObjectDatagram(9, 1, 4, 200, {}, b"", wire.ObjectStatus.END_OF_GROUP, False),
                wire.ObjectDatagram(9, 1, 0, None, {}, b"", wire.ObjectStatus.NORMAL, False)]:
        data = wire.encode_object_datagram(obj.track_alias, obj.group_id, obj.object_id, obj.payload, obj.extensions,
                                           priority=obj.priority, status=obj.status, end_of_group=obj.end_of_group)
        assert wire.decode_object_datagram(data) == obj


def test_a_fetched_datagram_object_is_flagged_and_has_no_subgroup():
    """Draft 16: a FETCH object of Forwarding Preference Datagram has serialization flag 0x40 (its
    two low bits then zero: no Subgroup ID); rtmpq never wrote it. The next object states its own
    Subgroup ID (a datagram object has none to refer to)."""
    encoder = wire.FetchObjectEncoder()
    data = (wire.encode_fetch_header(1) + encoder.object_header(4, 0, 0, 9, 1, None, datagram=True) + b"a"
            + encoder.object_header(4, 1, 1, 9, 1, None) + b"b")
    flags, pos = wire.decode_varint(data, 2)
    assert flags == 0x40 | 0x08 | 0x04 | 0x10  # datagram, group, object id, priority; no subgroup bits
    second, _ = wire.decode_varint(data, pos + 5)  # (group 4, object 0, priority 9, length 1, "a")
    assert second & 0x43 == 0x03  # not a datagram; its Subgroup ID is stated
    parser = wire.FetchStreamParser()
    assert parser.feed(data) == [wire.FetchObject(4, 0, 0, 9, b"a", {}, datagram=True),
                                 wire.FetchObject(4, 1, 1, 9, b"b", {})]


@pytest.mark.parametrize(("data", "problem"), [
    (b"\x22\x02\x05\x03\x07\x03", "datagram type"),  # STATUS with END_OF_GROUP
    (b"\x10\x02\x05\x03\x07x", "datagram type"),  # not 0b00X0XXXX (a subgroup stream's type)
    (b"\x01\x02\x05\x03\x07\x00x", "Extension Headers Length of 0"),
    (b"\x20\x02\x05\x03\x07\x02", "object status"),  # status 2 is none of draft 16's
    (b"\x00\x02\x05", "ends"),  # cut inside its header
])
def test_malformed_object_datagrams_close_the_session(data, problem):
    with pytest.raises(MoqProtocolError, match=problem) as info:
        wire.decode_object_datagram(data)
    assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION


def test_the_drafts_subgroup_examples_parse():
    """Draft 16 "Examples": type 0x14 (Subgroup ID and Priority present), then type 0x35
    (EXTENSIONS, Subgroup ID present, DEFAULT_PRIORITY). The draft's second example miscounts its
    extension block (33); here it is the block its fields make: Type 4 = 2186796243 (an 8-byte
    varint), Type 77 (delta 73) = "traceID:123456"."""
    first = b"\x14\x02\x00\x00\x00" + b"\x00\x04abcd" + b"\x00\x04efgh"
    parser = wire.SubgroupStreamParser()
    header, *objects = parser.feed(first)
    assert header == wire.SubgroupHeader(2, 0, 0, 0, extensions=False, end_of_group=False)
    assert [(o.object_id, o.payload) for o in objects] == [(0, b"abcd"), (1, b"efgh")]
    ext = b"\x04" + wire.encode_varint(2186796243) + b"\x40\x49\x0etraceID:123456"
    second = b"\x35\x02\x00\x00" + b"\x00" + bytes((len(ext),)) + ext + b"\x04abcd" + b"\x00\x00\x04efgh"
    header, *objects = wire.SubgroupStreamParser().feed(second)
    assert header == wire.SubgroupHeader(2, 0, 0, None, extensions=True, end_of_group=False)
    assert [(o.object_id, o.extensions, o.payload) for o in objects] == [
        (0, {4: 2186796243, 77: b"traceID:123456"}, b"abcd"), (1, {}, b"efgh")]


@pytest.mark.parametrize(("extensions", "problem"), [
    (b"\x02\x00", "DELIVERY_TIMEOUT"),  # 0x02 = 0: "MUST contain a value greater than 0"
    (b"\x0e\x41\x00", "DEFAULT_PUBLISHER_PRIORITY"),  # 0x0E = 256
    (b"\x22\x03", "DEFAULT_PUBLISHER_GROUP_ORDER"),  # 0x22 = 3
    (b"\x30\x02", "DYNAMIC_GROUPS"),  # 0x30 = 2
])
def test_out_of_range_track_extensions_close_the_session(extensions, problem):
    """Draft 16 "Extension Headers": these Track Extension values MUST close the session with
    PROTOCOL_VIOLATION; they were taken (draft 16 audit). SUBSCRIBE_OK: request id 0, alias 1, no
    parameters, then the Track Extensions to the end of the message."""
    payload = b"\x00\x01\x00" + extensions
    with pytest.raises(MoqProtocolError, match=problem) as info:
        wire.decode_control_message(b"\x04" + len(payload).to_bytes(2, "big") + payload)
    assert info.value.code == wire.SessionError.PROTOCOL_VIOLATION
    ok = b"\x00\x01\x00" + b"\x04\x28" + b"\x0a\x07"  # MAX_CACHE_DURATION 40, then 0x0E = 7
    assert wire.decode_control_message(b"\x04" + len(ok).to_bytes(2, "big") + ok)[0].extensions == {0x04: 40, 0x0E: 7}
