"""H.264/H.265 NAL unit framing (pure-Python reference of ext/nal.pxi).

- ``split_length_prefixed``: the NAL units of an AVCC/FLV access unit, as views (no copy).
- ``find_annexb_units``: (start, end) of each NAL unit of an Annex-B byte stream.
- ``unescape_rbsp``: emulation-prevention bytes removed (00 00 03 -> 00 00) into a new buffer,
  never larger than the input.
- ``access_unit_type``: what the length-prefixed NAL units of ``data[start:]`` hold (the ingest's
  fast path: no list of units): 0 nothing (empty), 1 a picture that is not a random access point,
  2 a random access point (AVC: an IDR unit; HEVC: an IRAP unit). Raises RemoteProtocolError
  where ``split_length_prefixed(data[start:], length_size)`` would, with the same message.
"""

from ..errors import RemoteProtocolError

__all__ = ["split_length_prefixed", "find_annexb_units", "unescape_rbsp", "access_unit_type"]


def _units(data, start: int, length_size: int):
    """(view, offset, size) of each length-prefixed NAL unit of ``data[start:]``, checked as it
    goes: the framing both functions below read (error offsets count from ``start``)."""
    if length_size not in (1, 2, 4):
        raise RemoteProtocolError(f"NAL length size {length_size} (must be 1, 2 or 4)")
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    if start < 0:
        raise ValueError(f"start {start} is negative")
    end = len(view)
    pos = start
    while pos < end:
        if end - pos < length_size:
            raise RemoteProtocolError(f"NAL length field truncated at byte {pos - start}")
        size = int.from_bytes(view[pos : pos + length_size], "big")
        pos += length_size
        if size == 0:
            raise RemoteProtocolError(f"NAL unit of length 0 at byte {pos - length_size - start}")
        if size > end - pos:
            raise RemoteProtocolError(f"NAL unit of {size} bytes at byte {pos - length_size - start} runs past the end ({end - pos} left)")
        yield view, pos, size
        pos += size


def split_length_prefixed(data, length_size: int) -> list:
    return [view[pos : pos + size] for view, pos, size in _units(data, 0, length_size)]


def find_annexb_units(data) -> list[tuple[int, int]]:
    """Units between start codes (00 00 01 or 00 00 00 01); trailing zero bytes are not part of a unit."""
    b = bytes(data)
    n = len(b)
    starts = []
    i = b.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i)
        i = b.find(b"\x00\x00\x01", i + 3)
    units = []
    for k, s in enumerate(starts):
        begin = s + 3
        end = starts[k + 1] if k + 1 < len(starts) else n
        while end > begin and b[end - 1] == 0:  # a 4-byte start code or trailing_zero_8bits
            end -= 1
        if end > begin:
            units.append((begin, end))
    return units


def unescape_rbsp(data) -> bytes:
    b = bytes(data)
    if b.find(b"\x00\x00\x03") < 0:
        return b
    out = bytearray()
    zeros = 0
    for byte in b:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def access_unit_type(data, start: int, length_size: int, hevc: bool) -> int:
    found = 0
    for view, pos, size in _units(data, start, length_size):  # every unit: a bad one later still raises
        if hevc:
            rap = size >= 2 and 16 <= (view[pos] >> 1) & 0x3F <= 23  # IRAP: BLA, IDR, CRA (hevc.is_irap)
        else:
            rap = view[pos] & 0x1F == 5  # IDR
        found = 2 if rap or found == 2 else 1
    return found
