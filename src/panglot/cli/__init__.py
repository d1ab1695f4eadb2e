"""The ``panglot`` command."""
