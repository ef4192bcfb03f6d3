"""SQLite event store: the only room that knows SQL."""
