"""The `danube` command, the operator's entry point: `danube up` and `status` (the whole
stack under supervisord), `keygen`, `migrate` and `config`. The top layer: it may import
every other Danube package, and none imports it."""
