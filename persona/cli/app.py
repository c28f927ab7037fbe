"""The ``persona`` command line. Every command has ``--help``; long work shows progress.

Global options (before the command): ``--home`` (state directory, else ``PERSONA_HOME``,
else ``.persona/``), ``--config`` (a YAML file, else ``PERSONA_CONFIG``), ``--verbose``.
Errors a user can cause end in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from core.errors import PersonaError
from core.fs import writable_dir
from core.settings import ConfigError, Settings, load_settings
from spark_jobs.jars import JarsMissing
from spark_jobs.session import get_spark

app = typer.Typer(
    name="persona",
    help="persona: user-profile warehouse (Spark + Delta, Keras encoder, MLlib fusion, Feast).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class State:
    """What the global options decided; commands read settings through it lazily."""

    def __init__(self) -> None:
        self.home: Optional[Path] = None
        self.config: Optional[Path] = None
        self.verbose = False
        self._settings: Optional[Settings] = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, self.home)
        return self._settings


state = State()


@app.callback()
def _global(
    home: Optional[Path] = typer.Option(
        None, "--home", help="State directory (tables, models, Feast). Default: $PERSONA_HOME or ./.persona"
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML settings file. Default: $PERSONA_CONFIG or embedded defaults"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show full tracebacks on errors."),
) -> None:
    state.home = home
    state.config = config
    state.verbose = verbose
    state._settings = None


def settings() -> Settings:
    return state.settings


def check_home(s: Settings) -> None:
    """Fail in one line, before any Spark work, when the home can't hold state (a path
    under a regular file, a read-only mount, no space for even a probe file)."""
    home = s.home.resolve()
    reason = writable_dir(home)
    if reason is not None:
        raise PersonaError(f"persona home {home} is not writable: {reason}")


def spark():
    """The session for the current settings (built on first use)."""
    check_home(state.settings)
    return get_spark(state.settings)


# Failures of the storage under a job, as the JVM reports them (deep in a stack trace).
_STORAGE_ERRORS = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def _storage_error(exc: BaseException) -> str | None:
    """A one-line message when ``exc`` (or its JVM cause chain) is a storage failure."""
    texts = [str(exc)]
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    for _ in range(20):  # the JVM cause chain, when py4j is still up
        if java is None:
            break
        try:
            texts.append(str(java.toString()))
            java = java.getCause()
        except Exception:
            break
    text = "\n".join(texts)
    for marker in _STORAGE_ERRORS:
        if marker in text:
            where = state._settings.warehouse_root if state._settings is not None else "the persona home"
            return (f"storage failure writing under {where}: {marker} "
                    "(Delta commits are atomic: every table keeps its last committed version; fix the storage and re-run)")
    return None


# Each module registers its commands on `app` at import time.
COMMAND_MODULES = [
    "persona.cli.setup",
    "persona.cli.ingest",
    "persona.cli.build",
    "persona.cli.demo",
    "persona.cli.generate",
    "persona.cli.profiles",
    "persona.cli.serve",
    "persona.cli.sql",
    "persona.cli.encoder",
    "persona.cli.maintain",
    "persona.cli.quality",
]
for _name in COMMAND_MODULES:
    importlib.import_module(_name)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def main() -> None:
    """Console entry point: user errors become one line and an exit code."""
    try:
        app(standalone_mode=False)
    except SystemExit:
        raise
    except (PersonaError, ConfigError, JarsMissing) as exc:
        if state.verbose:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # click usage errors and anything unexpected
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if state.verbose:
            raise
        storage = _storage_error(exc)
        if storage is not None:
            print(f"error: {storage}", file=sys.stderr)
            sys.exit(1)
        print(f"error: {exc.__class__.__name__}: {_one_line(exc)} (run with --verbose for details)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
