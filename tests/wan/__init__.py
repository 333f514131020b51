"""WAN profiles judged by a per-object scoreboard (make wan; one short profile in the suite)."""
