"""The Danube key daemon: the only process that reads the encryption key."""
