"""A seeded UDP impairment proxy (this machine's kernel has no netem)."""

from .proxy import Impairment, ImpairmentProxy

__all__ = ["Impairment", "ImpairmentProxy"]
