"""The Faust stream worker: fresh session signals, trending items, cache invalidation."""
