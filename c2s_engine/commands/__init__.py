"""Sub-commands of ``c2s`` beyond the data commands; each module has ``register(subparsers)``."""
