"""``python -m benchmarks``: each prints ratios against a baseline measured in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from benchmarks import (
    api_bench,
    batch_bench,
    common,
    faults_bench,
    freshness_bench,
    pipeline_bench,
    store_bench,
)
from tandem.contracts.settings import Settings
from tandem.shell.clictx import broker_option, settings_of
from tandem.shell.processes import environment

RESULTS = Path("benchmarks/RESULTS.md")
BROKER = "tandem.broker"


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@broker_option
@click.pass_context
def bench(ctx: click.Context, broker: str) -> None:
    """Benchmarks; each prints tandem's figures beside a baseline measured in the same run.

    Run from a checkout as ``python -m benchmarks NAME``; settings come from ``TANDEM_*``.
    """
    if ctx.obj is None:
        ctx.obj = Settings.load()
    ctx.meta[BROKER] = broker


def _services(
    ctx: click.Context, *, kafka: bool = True
) -> contextlib.AbstractContextManager[Settings]:
    """The services a benchmark runs on (see :func:`benchmarks.common.services`)."""
    return common.services(settings_of(ctx), kafka=kafka, broker=ctx.meta.get(BROKER, "auto"))


@bench.command("store")
@click.option("--entities", default=20_000, show_default=True, type=click.IntRange(100, 10**6))
@click.option("--reads", default=5000, show_default=True, type=click.IntRange(100, 10**6))
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 20))
@write_option
@click.pass_context
def bench_store(
    ctx: click.Context, entities: int, reads: int, repeat: int, write: Path | None
) -> None:
    """Store reads (the API's read + decode) vs raw GET; versioned writes vs bare MSET."""
    with _services(ctx, kafka=False) as settings:
        result = store_bench.StoreBench(
            [asyncio.run(store_bench.run(settings, entities, reads)) for _ in range(repeat)]
        )
    _report(
        "store",
        f"python -m benchmarks store --entities {entities} --reads {reads} --repeat {repeat}",
        result.markdown(),
        write,
    )


@bench.command("publish")
@click.option("--records", default=50_000, show_default=True, type=click.IntRange(1000, 10**7))
@click.option("--items", default=100, show_default=True, type=click.IntRange(1, 5000))
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Repetitions (each the bare loop, then every codec); cells show the median and range.",
)
@write_option
@click.pass_context
def bench_publish(
    ctx: click.Context, records: int, items: int, repeat: int, write: Path | None
) -> None:
    """The publisher (per compression codec) vs a bare confluent-kafka produce loop."""
    with _services(ctx) as settings:
        result = pipeline_bench.run_publish(settings, records, items, repeat)
    _report(
        "publish",
        f"python -m benchmarks publish --records {records} --items {items} --repeat {repeat}",
        result.markdown(),
        write,
    )


@bench.command("materialize")
@click.option("--records", default=100_000, show_default=True, type=click.IntRange(1000, 10**7))
@click.option("--items", default=50, show_default=True, type=click.IntRange(1, 5000))
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Repetitions (a fresh version each); cells show the median and the range.",
)
@write_option
@click.pass_context
def bench_materialize(
    ctx: click.Context, records: int, items: int, repeat: int, write: Path | None
) -> None:
    """Materializer vs (a) consuming without writing and (b) writing without consuming."""
    with _services(ctx) as settings:
        result = pipeline_bench.run_materialize(settings, records, items, repeat)
    _report(
        "materialize",
        f"python -m benchmarks materialize --records {records} --items {items} --repeat {repeat}",
        result.markdown(),
        write,
    )


@bench.command("faults")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(faults_bench.SCENARIOS),
    help="Run this scenario (repeatable); default: every one, in the order listed.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the rows as JSON to this file.",
)
@write_option
def bench_faults(only: tuple[str, ...], json_path: Path | None, write: Path | None) -> None:
    """Broker and Redis restarts and pauses, killed processes, a replay of the live version and
    a late record, each under load: acknowledged, lost, duplicated, recovered_s per scenario.

    Starts its own Apache Kafka and redis-server (Java 17+ and Maven needed); exits 1 if any
    row loses or duplicates something or does not recover within 15 s.
    """
    import json

    rows = asyncio.run(faults_bench.run(only or faults_bench.SCENARIOS, echo=click.echo))
    options = "".join(f" --only {name}" for name in only)
    _report(
        "faults",
        f"python -m benchmarks faults{options}",
        faults_bench.markdown(rows, common.machine()),
        write,
    )
    if json_path is not None:
        json_path.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
    if not all(row.ok for row in rows):
        raise SystemExit(1)


@bench.command("freshness")
@click.option(
    "--seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(1, 600),
    help="How long each rate is offered.",
)
@click.option("--rates", default="500,2000", show_default=True, help="Offered event rates.")
@click.option(
    "--flood",
    default=20_000,
    show_default=True,
    type=click.IntRange(100, 10**7),
    help="Events produced at once to measure the sustained rate.",
)
@click.option(
    "--changelog-batch-bytes",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1 << 20),
    help="Passed to the worker (0: the worker's default for the broker).",
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Repetitions of every rate and the flood; cells show the median and the range.",
)
@write_option
@click.pass_context
def bench_freshness(
    ctx: click.Context,
    seconds: float,
    rates: str,
    flood: int,
    changelog_batch_bytes: int,
    repeat: int,
    write: Path | None,
) -> None:
    """Produce → visible in Redis latency through the stream worker, vs the bare Kafka hop."""
    try:
        offered = tuple(int(r) for r in rates.split(","))
    except ValueError as e:
        raise click.BadParameter("a comma-separated list of integers", param_hint="--rates") from e
    with _services(ctx) as started:
        settings = started.model_copy(update={"key_prefix": "fresh" + uuid.uuid4().hex[:6]})
        result = asyncio.run(
            freshness_bench.run(
                settings,
                environment(settings),
                seconds,
                offered,
                flood,
                changelog_batch_bytes,
                repeat,
            )
        )
    broker = "tansu" if result.broker.startswith("Tansu") else "kafka"
    _report(
        f"freshness-{broker}-{changelog_batch_bytes or 'default'}",
        f"python -m benchmarks freshness --seconds {seconds:g} --rates {rates} --flood {flood} "
        f"--changelog-batch-bytes {changelog_batch_bytes} --repeat {repeat}",
        result.markdown(),
        write,
    )


@bench.command("api")
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(100, 10**6))
@click.option(
    "--seconds",
    default=3.0,
    show_default=True,
    type=click.FloatRange(1, 60),
    help="How long each rate is offered.",
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Climbs per server (interleaved); cells show the median and the range.",
)
@click.option(
    "--reranker",
    default="lightgbm",
    show_default=True,
    type=click.Choice(["lightgbm", "heuristic"]),
    help="Attach a LightGBM model to the u2i version (the batch stage's size) or none.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the figures as JSON (top-level cpu_per_request_ratio) to this file.",
)
@write_option
@click.pass_context
def bench_api(
    ctx: click.Context,
    users: int,
    seconds: float,
    repeat: int,
    reranker: str,
    json_path: Path | None,
    write: Path | None,
) -> None:
    """Open-loop p50/p99, CPU per request and the highest rate with p99 < 10 ms: tandem (1 and
    2 processes) vs a bare handler."""
    import json

    with _services(ctx) as settings:
        result = api_bench.run(settings, users, seconds, repeat, reranker)
    _report(
        "api",
        f"python -m benchmarks api --users {users} --seconds {seconds:g} --repeat {repeat} "
        f"--reranker {reranker}",
        result.markdown(),
        write,
    )
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _synth_option(
    name: str, default: float, kind: click.ParamType, text: str
) -> Callable[[Any], Any]:
    """An option sizing the synthetic set."""
    return click.option(name, default=default, show_default=True, type=kind, help=text)


@bench.command("batch")
@_synth_option("--users", 100_000, click.IntRange(100, 10**7), "Users of the synthetic set.")
@_synth_option("--items", 20_000, click.IntRange(100, 10**7), "Items of the synthetic set.")
@_synth_option(
    "--events-per-user", 50.0, click.FloatRange(2, 10_000), "Mean interactions per user."
)
@_synth_option(
    "--dask-workers",
    0,
    click.IntRange(0, 64),
    "Also run on a LocalCluster of N workers (0: single process only).",
)
@click.option(
    "--worker-memory",
    default="1.5GB",
    show_default=True,
    help="Each Dask worker's memory limit (below the single-process peak, to show it fits).",
)
@click.option(
    "--single-size",
    type=(click.IntRange(100, 10**7), click.IntRange(100, 10**7)),
    default=None,
    help="USERS ITEMS of a smaller set for the single-process run (the Dask run keeps "
    "--users/--items); its peak is a lower bound of the full size's. Default: the same set.",
)
@write_option
def bench_batch(
    users: int,
    items: int,
    events_per_user: float,
    dask_workers: int,
    worker_memory: str,
    single_size: tuple[int, int] | None,
    write: Path | None,
) -> None:
    """Wall time and peak memory of the batch stage, stage by stage (no services needed)."""
    result = batch_bench.bench(
        users, items, events_per_user, dask_workers, worker_memory, single_size
    )
    smaller = f" --single-size {single_size[0]} {single_size[1]}" if single_size else ""
    _report(
        "batch",
        f"python -m benchmarks batch --users {users} --items {items} "
        f"--events-per-user {events_per_user:g} --dask-workers {dask_workers} "
        f"--worker-memory {worker_memory}{smaller}",
        result.markdown(),
        write,
    )
