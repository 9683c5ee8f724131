"""tandem: two-stage recommendation serving (shared contracts live in this package)."""

__version__ = "0.1.0"
