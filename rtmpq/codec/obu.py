"""AV1 OBU framing (pure-Python reference of ext/obu.pxi).

``split_obus``: the OBUs of a temporal unit or of an av1C's configOBUs (AV1 spec 5.3, low-overhead
bitstream format), as (obu_type, header start, payload start, end) tuples. Every OBU but the last
must carry its size; leb128 sizes are at most 8 bytes and 2**32 - 1 (AV1 spec 4.10.5); a set
forbidden bit, a truncated header or a size past the end raises RemoteProtocolError.
"""

from ..errors import RemoteProtocolError

__all__ = ["split_obus"]

# OBUs of one temporal unit we look at; a hostile unit of single-byte OBUs could otherwise make a
# list as long as the frame (an encoder writes a handful per temporal unit).
MAX_OBUS = 4096


def split_obus(data) -> list[tuple[int, int, int, int]]:
    b = data if isinstance(data, (bytes, bytearray)) else memoryview(data).cast("B")
    n = len(b)
    pos = 0
    out = []
    while pos < n:
        if len(out) >= MAX_OBUS:
            raise RemoteProtocolError(f"AV1: more than {MAX_OBUS} OBUs in one unit")
        start = pos
        header = b[pos]
        if header & 0x80:
            raise RemoteProtocolError(f"AV1 OBU at byte {pos}: forbidden bit set")
        obu_type = (header >> 3) & 0x0F
        pos += 1
        if header & 0x04:  # obu_extension_flag
            if pos >= n:
                raise RemoteProtocolError(f"AV1 OBU at byte {start}: extension header truncated")
            pos += 1
        if header & 0x02:  # obu_has_size_field
            size = 0
            for i in range(8):
                if pos >= n:
                    raise RemoteProtocolError(f"AV1 OBU at byte {start}: size truncated")
                byte = b[pos]
                pos += 1
                size |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    break
            else:
                raise RemoteProtocolError(f"AV1 OBU at byte {start}: size longer than 8 bytes")
            if size > 0xFFFFFFFF or size > n - pos:
                raise RemoteProtocolError(f"AV1 OBU at byte {start}: size {size} runs past the end ({n - pos} left)")
            end = pos + size
        else:
            end = n
        out.append((obu_type, start, pos, end))
        pos = end
    return out
