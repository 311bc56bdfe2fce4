"""Helpers the test directories share (CONVENTIONS 18): a real keyd, the `danube up` stack,
the PostgreSQL test databases, and a clean environment and free port for started programs.

Test files import from here, never from another directory's conftest.py.
"""
