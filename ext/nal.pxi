# Compiled twin of rtmpq/codec/nal.py.

def split_length_prefixed(data, int length_size):
    cdef const unsigned char[:] b
    cdef Py_ssize_t pos = 0, end, size
    cdef int i
    cdef list units = []
    if length_size != 1 and length_size != 2 and length_size != 4:
        raise RemoteProtocolError(f"NAL length size {length_size} (must be 1, 2 or 4)")
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    b = view
    end = b.shape[0]
    while pos < end:
        if end - pos < length_size:
            raise RemoteProtocolError(f"NAL length field truncated at byte {pos}")
        size = 0
        for i in range(length_size):
            size = (size << 8) | b[pos + i]
        pos += length_size
        if size == 0:
            raise RemoteProtocolError(f"NAL unit of length 0 at byte {pos - length_size}")
        if size > end - pos:
            raise RemoteProtocolError(f"NAL unit of {size} bytes at byte {pos - length_size} runs past the end ({end - pos} left)")
        units.append(view[pos:pos + size])
        pos += size
    return units


def find_annexb_units(data):
    cdef const unsigned char[:] b = data
    cdef Py_ssize_t n = b.shape[0], i = 0, k, begin, end
    cdef list starts = []
    cdef list units = []
    while i + 2 < n:
        if b[i + 2] > 1:
            i += 3
        elif b[i] == 0 and b[i + 1] == 0 and b[i + 2] == 1:
            starts.append(i)
            i += 3
        else:
            i += 1
    for k in range(len(starts)):
        begin = <Py_ssize_t>starts[k] + 3
        end = <Py_ssize_t>starts[k + 1] if k + 1 < len(starts) else n
        while end > begin and b[end - 1] == 0:
            end -= 1
        if end > begin:
            units.append((begin, end))
    return units


def unescape_rbsp(data):
    cdef const unsigned char[:] b = data
    cdef Py_ssize_t n = b.shape[0], i, o = 0
    cdef int zeros = 0
    cdef unsigned char c
    cdef bytearray out = bytearray(n)
    cdef unsigned char* dst = <unsigned char*>PyByteArray_AS_STRING(out)
    for i in range(n):
        c = b[i]
        if zeros >= 2 and c == 3:
            zeros = 0
            continue
        dst[o] = c
        o += 1
        if c == 0:
            zeros += 1
        else:
            zeros = 0
    return bytes(out[:o])


def access_unit_type(data, Py_ssize_t start, int length_size, bint hevc):
    cdef const unsigned char[:] b
    cdef Py_ssize_t pos = start, end, size
    cdef int i, found = 0
    if length_size != 1 and length_size != 2 and length_size != 4:
        raise RemoteProtocolError(f"NAL length size {length_size} (must be 1, 2 or 4)")
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    b = view
    end = b.shape[0]
    if start < 0:
        raise ValueError(f"start {start} is negative")
    while pos < end:
        if end - pos < length_size:
            raise RemoteProtocolError(f"NAL length field truncated at byte {pos - start}")
        size = 0
        for i in range(length_size):
            size = (size << 8) | b[pos + i]
        pos += length_size
        if size == 0:
            raise RemoteProtocolError(f"NAL unit of length 0 at byte {pos - length_size - start}")
        if size > end - pos:
            raise RemoteProtocolError(f"NAL unit of {size} bytes at byte {pos - length_size - start} runs past the end ({end - pos} left)")
        if found != 2:
            if hevc:
                if size >= 2 and 16 <= ((b[pos] >> 1) & 0x3F) <= 23:
                    found = 2
                else:
                    found = 1
            elif (b[pos] & 0x1F) == 5:
                found = 2
            else:
                found = 1
        pos += size
    return found
