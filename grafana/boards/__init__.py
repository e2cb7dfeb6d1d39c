"""The dashboards of the mixin, one module each, and what they share (lib.py)."""
