"""One module per ``psma-stage`` subcommand; each exposes ``register(subparsers)``."""
