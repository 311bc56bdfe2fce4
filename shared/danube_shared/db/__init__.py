"""Danube's persistence layer: the SQLite engine and its units of work (`engine`), the ORM
models (`schema`), one repository per aggregate (`repositories`), and the id and timestamp
conventions every row follows (`ids`, `timestamps`)."""
