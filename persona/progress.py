"""Progress and timing on the terminal (rich), shared by every long command."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
out = Console()


def bar(transient: bool = False) -> Progress:
    """A progress bar with done/total, elapsed and ETA. Use as a context manager."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not sys.stderr.isatty() and False,
    )


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict]:
    """Print ``name`` when it starts and its duration when it ends."""
    info: dict = {}
    start = time.perf_counter()
    console.print(f"[bold cyan]>[/] {name} ...")
    try:
        yield info
    except BaseException:
        info["seconds"] = time.perf_counter() - start
        console.print(f"[bold red]failed[/] {name} after {info['seconds']:.1f}s")
        raise
    info["seconds"] = time.perf_counter() - start
    console.print(f"[bold green]done[/] {name} in {info['seconds']:.1f}s")
