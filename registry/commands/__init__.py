"""The command layer, between the CLI and the core: one function per `registry` command,
named after it (`commands.reconcile.reconcile`, `commands.quality.health`, ...). Each opens
what the command needs once (one `Git`, the state, one database session) and passes them down;
the core takes a state and a connection, never a path or a DSN. Orchestration of several core
steps (reconcile then ingest then reconcile, record health then check, write a baseline) lives
here too, so the CLI only parses and renders.
"""
