"""The prediction store: how versions of candidate lists live in Redis."""
