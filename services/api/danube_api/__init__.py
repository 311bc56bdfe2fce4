"""The Danube HTTP API: a FastAPI app over SQLite that drives keyd."""
