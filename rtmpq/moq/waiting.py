"""SUBSCRIBEs a relay holds until it can place them: for a session upstream that is not up yet, or
for a track a new local broadcast has not announced yet (relay.py)."""

# A new broadcast's tracks appear as their sequence headers arrive: for this long after a publish
# starts, a SUBSCRIBE to a track it does not have yet waits for it instead of being refused.
NEW_TRACK_WAIT = 3.0
# At most this many such SUBSCRIBEs wait per broadcast, and this many wait for a session upstream
# (all broadcasts together); more are refused at once ([moq] max_waiting_subscribes).
MAX_WAITING_SUBSCRIBES = 256
# A relay with an upstream (`rtmpq relay --upstream`) whose session there is not up (it just
# started, or the link is reconnecting, RECONNECT_MAX apart at most) holds a SUBSCRIBE to a
# broadcast it does not know this long (seconds), and passes it up once the session is, instead of
# refusing it: a restarted relay's viewers come back at once, often before its own session does
# ([moq] upstream_wait).
UPSTREAM_WAIT = 12.0
