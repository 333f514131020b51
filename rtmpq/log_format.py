"""One log record, one line: what a peer chose (an RTMP connect's flashVer, a MoQ track namespace,
a hook's answer) reaches log messages, and a newline or carriage return in it would forge a line
of its own (`...\\n2026-11-30 12:00:00,000 INFO rtmpq.nodes: 203.0.113.7:1: publishing live/x`).
The formatter every command logs through escapes, in the message, each character that is not
printable (controls, line and paragraph separators, bidi overrides) as Python writes it in a
string literal; a traceback after the message keeps its lines."""

import logging


def one_line(text: str) -> str:
    """``text`` with its non-printable characters escaped (``\\n``, ``\\x1b``, ``\\u2028``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose messages are one line each (``one_line``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)
