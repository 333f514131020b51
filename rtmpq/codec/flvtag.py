"""Placeholder: see the brief for rtmpq/codec/flvtag.py."""

__all__: list[str] = []
