"""Danube's worker: claims jobs from its node's API, runs their steps, and ships their
output with every secret masked (DESIGN sections 12 and 13)."""
