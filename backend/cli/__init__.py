"""The ``labelloop`` command: one module per command group, :mod:`backend.cli.main` parses.

Every command module imports the shared helpers from :mod:`backend.cli.common`, never from
:mod:`backend.cli.main` (which imports them).
"""
