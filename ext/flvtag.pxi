# Compiled twin of rtmpq/codec/flvtag.py: same tags, same errors.

from rtmpq.codec.flv_types import VideoTag as _VideoTag, AudioTag as _AudioTag

cdef dict _FLV_LEGACY_VIDEO = {7: "avc1", 12: "hvc1", 13: "av01"}
cdef dict _FLV_LEGACY_AUDIO = {10: "mp4a", 2: ".mp3", 14: ".mp3"}


cdef inline int _flv_need(Py_ssize_t size, Py_ssize_t pos, Py_ssize_t n, str what) except -1:
    if size - pos < n:
        raise RemoteProtocolError(f"FLV {what} tag truncated at byte {pos}")
    return 0


cdef inline str _flv_fourcc(const unsigned char[:] b, Py_ssize_t pos):
    return bytes(b[pos:pos + 4]).decode("latin-1")


cdef Py_ssize_t _flv_skip_modex(const unsigned char[:] b, Py_ssize_t pos, int* packet_type, int modex, str what) except -1:
    cdef Py_ssize_t size, n = b.shape[0]
    while packet_type[0] == modex:
        _flv_need(n, pos, 1, what)
        size = b[pos] + 1
        pos += 1
        if size == 256:
            _flv_need(n, pos, 2, what)
            size = ((b[pos] << 8) | b[pos + 1]) + 1
            pos += 2
        _flv_need(n, pos, size + 1, what)
        pos += size
        packet_type[0] = b[pos] & 0x0F
        pos += 1
    return pos


cdef int _FLV_MAX_TRACKS = 64  # MAX_TRACKS_PER_MESSAGE of the twin


cdef list _flv_tracks(const unsigned char[:] b, Py_ssize_t pos, int* packet_type, int multitrack, str what, bint every):
    """The tracks of a multitrack message: [(fourcc, track_id, data position, end)]."""
    cdef Py_ssize_t n = b.shape[0], end, size
    cdef int mt, track_id
    cdef object fourcc = None
    cdef list tracks = []
    _flv_need(n, pos, 1, what)
    mt = b[pos] >> 4
    packet_type[0] = b[pos] & 0x0F
    pos += 1
    if packet_type[0] == multitrack or mt > 2:
        raise RemoteProtocolError(f"FLV {what} multitrack header is invalid")
    if mt != 2:
        _flv_need(n, pos, 4, what)
        fourcc = _flv_fourcc(b, pos)
        pos += 4
    while True:
        if len(tracks) >= _FLV_MAX_TRACKS:
            raise RemoteProtocolError(f"FLV {what} message with more than {_FLV_MAX_TRACKS} tracks")
        if mt == 2:
            _flv_need(n, pos, 4, what)
            fourcc = _flv_fourcc(b, pos)
            pos += 4
        _flv_need(n, pos, 1, what)
        track_id = b[pos]
        pos += 1
        end = n
        if mt != 0:
            _flv_need(n, pos, 3, what)
            size = (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2]
            pos += 3
            if size > n - pos:
                raise RemoteProtocolError(f"FLV {what} multitrack track of {size} bytes past the end")
            end = pos + size
        tracks.append((fourcc, track_id, pos, end))
        pos = end
        if not every or mt == 0 or pos >= n:
            return tracks


cdef list _flv_video(body, bint every):
    cdef const unsigned char[:] b = body
    cdef Py_ssize_t n = b.shape[0], pos, end
    cdef int b0, frame_type, codec_id, packet_type, cts, track_id = 0
    cdef list tracks, out
    _flv_need(n, 0, 1, "video")
    b0 = b[0]
    frame_type = (b0 >> 4) & 0x07
    if not b0 & 0x80:
        codec_id = b0 & 0x0F
        codec = _FLV_LEGACY_VIDEO.get(codec_id) or f"legacy-{codec_id}"
        if frame_type == 5:
            return [_VideoTag(codec, frame_type, 0x100, 0, False, 0, n, n)]
        if codec_id == 7 or codec_id == 12 or codec_id == 13:
            _flv_need(n, 1, 4, "video")
            cts = (b[2] << 16) | (b[3] << 8) | b[4]
            if cts & 0x800000:
                cts -= 0x1000000
            return [_VideoTag(codec, frame_type, b[1], cts, False, 0, 5, n)]
        return [_VideoTag(codec, frame_type, 1, 0, False, 0, 1, n)]
    packet_type = b0 & 0x0F
    pos = _flv_skip_modex(b, 1, &packet_type, 7, "video")
    if frame_type == 5 and packet_type != 4:
        return [_VideoTag("", frame_type, 0x100, 0, True, 0, n, n)]
    if packet_type == 6:
        tracks = _flv_tracks(b, pos, &packet_type, 6, "video", every)
    else:
        _flv_need(n, pos, 4, "video")
        tracks = [(_flv_fourcc(b, pos), 0, pos + 4, n)]
    out = []
    for fourcc, track_id, pos, end in tracks:
        cts = 0
        if packet_type == 1 and (fourcc == "avc1" or fourcc == "hvc1"):
            if end - pos < 3:
                raise RemoteProtocolError(f"FLV video tag truncated at byte {pos}")
            cts = (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2]
            if cts & 0x800000:
                cts -= 0x1000000
            pos += 3
        out.append(_VideoTag(fourcc, frame_type, 1 if packet_type == 3 else packet_type, cts, True, track_id, pos, end))
    return out


def parse_video_tag(body):
    return _flv_video(body, False)[0]


def parse_video_tracks(body):
    return _flv_video(body, True)


cdef list _flv_audio(body, bint every):
    cdef const unsigned char[:] b = body
    cdef Py_ssize_t n = b.shape[0], pos
    cdef int b0, sound_format, packet_type
    cdef list tracks
    _flv_need(n, 0, 1, "audio")
    b0 = b[0]
    sound_format = b0 >> 4
    if sound_format != 9:
        codec = _FLV_LEGACY_AUDIO.get(sound_format) or f"legacy-{sound_format}"
        if sound_format == 10:
            _flv_need(n, 1, 1, "audio")
            return [_AudioTag(codec, b[1], False, 0, 2, n, (b0 >> 2) & 3, (b0 >> 1) & 1, bool(b0 & 1))]
        return [_AudioTag(codec, 1, False, 0, 1, n, (b0 >> 2) & 3, (b0 >> 1) & 1, bool(b0 & 1))]
    packet_type = b0 & 0x0F
    pos = _flv_skip_modex(b, 1, &packet_type, 7, "audio")
    if packet_type == 5:
        tracks = _flv_tracks(b, pos, &packet_type, 5, "audio", every)
    else:
        _flv_need(n, pos, 4, "audio")
        tracks = [(_flv_fourcc(b, pos), 0, pos + 4, n)]
    return [_AudioTag(fourcc, packet_type, True, track_id, p, e, 0, 0, False) for fourcc, track_id, p, e in tracks]


def parse_audio_tag(body):
    return _flv_audio(body, False)[0]


def parse_audio_tracks(body):
    return _flv_audio(body, True)
