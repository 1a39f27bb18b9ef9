"""The command-line edge: the typer app, one module per command group, and the demo. It parses
and renders; the work is done by `registry.commands` and the core packages.
"""
