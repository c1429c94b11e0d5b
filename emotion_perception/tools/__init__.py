"""The ``emotion-perception`` command line: each sub-command lives in its own module here."""
