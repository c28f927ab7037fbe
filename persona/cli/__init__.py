"""The ``persona`` command line. ``app`` holds the global options, the error handling and
the entry point; every other module here registers one group of commands on it."""

from persona.cli.app import main

__all__ = ["main"]
