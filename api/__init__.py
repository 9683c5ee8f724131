"""The recommendation API: online re-ranking under a deadline, event ingestion, admin."""
