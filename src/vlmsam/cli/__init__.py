"""The ``vlmsam`` command line."""
