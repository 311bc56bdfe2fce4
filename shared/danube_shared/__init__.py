"""Code every Danube program shares: configuration, logging, errors, the keyd protocol
and its clients, and the database layer."""
