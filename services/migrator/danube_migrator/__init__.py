"""The Danube migrator: Alembic migrations and the one-shot runner that applies them."""
