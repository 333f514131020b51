"""Placeholder: see the brief for rtmpq/codec/chunk.py."""

__all__: list[str] = []
