# Compiled twin of rtmpq/codec/obu.py.

cdef Py_ssize_t _OBU_MAX = 4096  # MAX_OBUS of the twin


def split_obus(data):
    cdef const unsigned char[:] b = data
    cdef Py_ssize_t n = b.shape[0], pos = 0, start, end
    cdef unsigned long long size
    cdef int header, obu_type, i, byte, done
    cdef list out = []
    while pos < n:
        if len(out) >= _OBU_MAX:
            raise RemoteProtocolError(f"AV1: more than {_OBU_MAX} OBUs in one unit")
        start = pos
        header = b[pos]
        if header & 0x80:
            raise RemoteProtocolError(f"AV1 OBU at byte {pos}: forbidden bit set")
        obu_type = (header >> 3) & 0x0F
        pos += 1
        if header & 0x04:
            if pos >= n:
                raise RemoteProtocolError(f"AV1 OBU at byte {start}: extension header truncated")
            pos += 1
        if header & 0x02:
            size = 0
            done = 0
            for i in range(8):
                if pos >= n:
                    raise RemoteProtocolError(f"AV1 OBU at byte {start}: size truncated")
                byte = b[pos]
                pos += 1
                size |= (<unsigned long long>(byte & 0x7F)) << (7 * i)
                if not byte & 0x80:
                    done = 1
                    break
            if not done:
                raise RemoteProtocolError(f"AV1 OBU at byte {start}: size longer than 8 bytes")
            if size > 0xFFFFFFFFULL or size > <unsigned long long>(n - pos):
                raise RemoteProtocolError(f"AV1 OBU at byte {start}: size {size} runs past the end ({n - pos} left)")
            end = pos + <Py_ssize_t>size
        else:
            end = n
        out.append((obu_type, start, pos, end))
        pos = end
    return out
