"""The ``torchgraft`` command line: one small module per subcommand, wired in ``main``."""
