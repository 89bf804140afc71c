"""Storage: the JSON store, the PostgreSQL store, and the repository over both."""
