"""Access control: signed tokens (JWT) that say what a holder may do and where."""
