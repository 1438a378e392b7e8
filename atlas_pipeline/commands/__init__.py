"""``atlas`` subcommands, one module each; ``atlas_pipeline.cli`` only registers them.

Each module has ``register(commands)``, adding its parser(s) to the ``atlas`` subparsers, and the
handler(s) it points them at. Handlers raise ``cli.UsageError`` (exit 2) or ``cli.CommandFailed``
(exit 1) with a one-line reason.
"""
