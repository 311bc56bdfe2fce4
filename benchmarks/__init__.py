"""Danube's benchmarks: each performance target of DESIGN.md section 10, measured against
a baseline in the same run (`uv run python -m benchmarks`)."""
