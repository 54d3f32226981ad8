"""Synthetic negative faces: generator backends, versioned face banks, the refresh service and
the `synthetic` negative source (see docs/generator.md)."""
