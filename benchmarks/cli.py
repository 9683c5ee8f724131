"""``tandem bench``: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from benchmarks import common, store_bench
from tandem.settings import Settings

RESULTS = Path("benchmarks/RESULTS.md")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def _report(name: str, command: str, body: str, write: Path | None) -> None:
    click.echo(body)
    if write is not None:
        common.write_section(write, name, f"{body}\n\nCommand: `{command}`")
        click.echo(f"\nwritten to {write}")


write_option = click.option(
    "--write",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Also record the figures in this file (for example {RESULTS}).",
)


@click.group()
def bench() -> None:
    """Benchmarks; each prints tandem's figures beside a baseline measured in the same run."""


@bench.command("store")
@click.option("--entities", default=20_000, show_default=True, type=click.IntRange(100, 10**6))
@click.option("--reads", default=5000, show_default=True, type=click.IntRange(100, 10**6))
@write_option
@click.pass_context
def bench_store(ctx: click.Context, entities: int, reads: int, write: Path | None) -> None:
    """Store reads (live pointer + decode) vs raw GET; versioned writes vs pipelined SET."""
    with common.services(_settings(ctx), kafka=False) as settings:
        result = asyncio.run(store_bench.run(settings, entities, reads))
    _report(
        "store",
        f"tandem bench store --entities {entities} --reads {reads}",
        result.markdown(),
        write,
    )
