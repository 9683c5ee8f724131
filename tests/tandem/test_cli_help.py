"""Every option of every command says what it does, and help text points only at what exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tandem.shell.cli import main

ROOT = Path(__file__).resolve().parents[2]


def commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from commands(sub, f"{path} {name}")


OURS = list(commands(main, "tandem"))


@pytest.mark.parametrize(("path", "command"), OURS, ids=[path for path, _ in OURS])
def test_every_option_has_help(path: str, command: click.Command) -> None:
    missing = [
        option.opts[0]
        for option in command.params
        if isinstance(option, click.Option) and not option.help
    ]
    assert missing == [], f"{path}: {missing} without help"
    assert command.help, f"{path} has no help"


@pytest.mark.parametrize(("path", "command"), OURS, ids=[path for path, _ in OURS])
def test_help_points_at_files_that_exist(path: str, command: click.Command) -> None:
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    named = {
        name
        for text in texts
        for name in re.findall(r"[\w/.-]+\.(?:md|py|ya?ml|toml)\b|KAFKA-NOTES|DESIGN", text)
    }
    assert {name for name in named if not (ROOT / name).exists()} == set(), path


def test_materialize_progress_counts_the_applied_records() -> None:
    from tandem.consumers.metrics import RECORDS_APPLIED
    from tandem.shell.progress import MaterializeProgress

    with MaterializeProgress(["pa", "pb"], disable=True) as progress:
        before = progress.refresh()
        RECORDS_APPLIED.labels("pa").inc(7)
        after = progress.refresh()
    assert after["pa"] == before["pa"] + 7
    assert after["pb"] == before["pb"]
