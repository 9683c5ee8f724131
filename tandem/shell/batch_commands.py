"""``tandem publish``, ``tandem data synth`` and ``tandem batch run|evaluate``."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from tandem.contracts.domain import STORES
from tandem.contracts.schemas import MAX_CANDIDATES
from tandem.shell.clictx import settings_of

BASELINE_NAMES = ("popularity", "itemknn", "ease")  # as batch.baselines.BASELINES (lazy import)


@click.command()
@click.argument("store", required=False)
@click.option(
    "--from-batch",
    "batch_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder written by `tandem batch run --out DIR`: push its stores (all, or STORE).",
)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON lines or parquet with entity_id and items [{item_id, score}].",
)
@click.option(
    "--synthetic",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="Publish this many random entities instead (for load and demos).",
)
@click.option(
    "--candidates",
    type=click.IntRange(1, MAX_CANDIDATES),
    default=200,
    show_default=True,
    help="Items per synthetic entity.",
)
@click.option(
    "--partitions",
    type=click.IntRange(1, 256),
    default=None,
    help="Partitions of the version topic [TANDEM_PARTITIONS].",
)
@click.option(
    "--metadata",
    "metadata_json",
    default=None,
    help='JSON object stored with the version, e.g. {"metrics": {"ndcg@10": 0.31}}.',
)
@click.option("--seed", default=0, show_default=True, help="Seed of --synthetic.")
@click.pass_context
def publish(
    ctx: click.Context,
    store: str | None,
    batch_dir: Path | None,
    source: Path | None,
    synthetic: int | None,
    candidates: int,
    partitions: int | None,
    metadata_json: str | None,
    seed: int,
) -> None:
    """Push candidate lists as a new version of STORE (one topic per version)."""
    from tqdm import tqdm

    from tandem.batch.candidates_io import read_candidates, synthetic_candidates
    from tandem.batch.publish import Publisher

    if batch_dir is not None:
        if source is not None or synthetic is not None:
            raise click.UsageError("--from-batch goes alone, without --from or --synthetic")
        _publish_saved(ctx, batch_dir, store)
        return
    if store is None:
        raise click.UsageError("name the STORE to publish (or give --from-batch DIR)")
    if (source is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --from FILE and --synthetic N")
    metadata = {}
    if metadata_json is not None:
        try:
            metadata = orjson.loads(metadata_json)
        except orjson.JSONDecodeError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--metadata") from e
        if not isinstance(metadata, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--metadata")
    rows = (
        read_candidates(source)
        if source is not None
        else synthetic_candidates(synthetic or 0, candidates, seed)
    )
    with (
        Publisher(settings_of(ctx)) as publisher,
        tqdm(total=synthetic, desc=f"publish {store}", unit="rec", disable=None) as bar,
    ):
        result = publisher.publish(
            store, rows, metadata=metadata, partitions=partitions, on_record=bar.update
        )
    click.echo(result.describe())


def _publish_saved(ctx: click.Context, folder: Path, store: str | None) -> None:
    from tandem.batch.publish import check_broker, publish_output
    from tandem.batch.saved import load_saved

    stores = _stores(store) if store is not None else list(STORES)
    saved = load_saved(folder)
    check_broker(settings_of(ctx))
    for line in publish_output(settings_of(ctx), saved, stores):
        click.echo(line)


@click.group()
def data() -> None:
    """Interaction data sets."""


@data.command("synth")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write interactions.parquet and items.parquet into.",
)
@click.option(
    "--shape",
    type=click.Choice(["sessions", "ratings"]),
    default="sessions",
    show_default=True,
    help="sessions: browsing sessions with a funnel of event types; ratings: one event per "
    "user and item (like or view), no sessions, histories over years.",
)
@click.option(
    "--users", default=2000, show_default=True, type=click.IntRange(10, 10**7), help="Users."
)
@click.option(
    "--items", default=1000, show_default=True, type=click.IntRange(10, 10**7), help="Items."
)
@click.option(
    "--days",
    default=None,
    type=click.IntRange(2, 36_500),
    help="Time span in days [default: 14 for sessions, 1095 for ratings].",
)
@click.option(
    "--events-per-user",
    default=40.0,
    show_default=True,
    type=click.FloatRange(2, 10_000),
    help="Mean interactions per user.",
)
@click.option("--seed", default=0, show_default=True, help="Same seed, same data.")
def data_synth(
    out: Path,
    shape: str,
    users: int,
    items: int,
    days: int | None,
    events_per_user: float,
    seed: int,
) -> None:
    """Write a synthetic data set (interactions.parquet, items.parquet) into OUT."""
    from tandem.batch.synth import SynthSpec, write

    span = days if days is not None else (1095 if shape == "ratings" else 14)
    spec = SynthSpec(users, items, span, events_per_user, seed)
    events, n_items = write(spec, out, shape)
    click.echo(
        f"wrote {events:,} {shape}-shaped interactions of {users:,} users on {n_items:,} items "
        f"({spec.categories} categories) to {out}"
    )


@click.group()
def batch() -> None:
    """The batch stage: candidates, ranking, re-ranker, evaluation, publishing."""


def _stores(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STORES))
    if unknown:
        raise click.BadParameter(
            f"unknown store(s) {unknown}; choose from {STORES}", param_hint="--stores"
        )
    return chosen


@contextlib.contextmanager
def _engine(address: str | None, workers: int | None) -> Iterator[None]:
    """The chunked steps on Dask when asked (the dashboard link printed), else here."""
    from tandem.batch import engine

    if address is None and workers is None:
        yield
        return
    if address is not None and workers is not None:
        raise click.UsageError("give one of --dask ADDRESS and --dask-workers N")
    with engine.dask_cluster(address, workers) as (on_dask, dashboard), engine.using(on_dask):
        click.echo(f"dask dashboard: {dashboard}")
        yield
        click.echo(
            f"dask: {on_dask.tasks} tasks ran on {len(on_dask.workers)} worker(s); "
            f"{on_dask.ranker_fits} ranker(s) trained with lightgbm.dask"
        )


def _options(protocol: str, last_n: str, exclude_seen: str, seed: int, lists: bool) -> Any:
    from tandem.batch.exceptions import InputError
    from tandem.batch.pipeline import ALL_EVENTS, Options
    from tandem.batch.split import Protocol

    kinds = [k.strip() for k in exclude_seen.split(",") if k.strip()]
    chosen = ALL_EVENTS if kinds == ["all"] else frozenset(kinds)
    unknown = sorted(chosen - ALL_EVENTS)
    if unknown:
        raise click.BadParameter(
            f"unknown event type(s) {unknown}; choose from {sorted(ALL_EVENTS)} or 'all'",
            param_hint="--exclude-seen",
        )
    try:
        return Options(Protocol.parse(protocol, last_n), chosen, seed, lists)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--last-n") from e


def _evaluation_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--data",
            "data_dir",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            required=True,
            help="Folder with interactions.(parquet|csv) or an interactions/ folder of partitions, "
            "and an optional items.*",
        ),
        click.option(
            "--protocol",
            type=click.Choice(["time", "last-n"]),
            default="time",
            show_default=True,
            help="time: one global split time; last-n: each user's last N interactions.",
        ),
        click.option(
            "--last-n",
            default="20%",
            show_default=True,
            help="With --protocol last-n: a count (5) or a share (20%) held out per user.",
        ),
        click.option(
            "--exclude-seen",
            default="all",
            show_default=True,
            help="Event types whose items a user is not recommended again (comma list or all).",
        ),
        click.option("--seed", default=0, show_default=True, help="Seed of sampling and training."),
        click.option(
            "--dask",
            "dask_address",
            default=None,
            help="Run the chunked steps on the Dask scheduler at this address (tcp://host:8786); "
            "batch run writes u2i there part by part, into --out (give a folder every worker "
            "can write).",
        ),
        click.option(
            "--dask-workers",
            type=click.IntRange(1, 256),
            default=None,
            help="Start a local Dask cluster of N worker processes for the chunked steps.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@batch.command("run")
@_evaluation_options
@click.option(
    "--publish",
    "do_publish",
    is_flag=True,
    help="Push each store as a new version (the broker is checked before training).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the output in this folder, for `tandem publish --from-batch DIR` later.",
)
@click.option(
    "--stores",
    default=",".join(STORES),
    show_default=True,
    help="Stores to publish (comma list).",
)
@click.pass_context
def batch_run(
    ctx: click.Context,
    data_dir: Path,
    protocol: str,
    last_n: str,
    exclude_seen: str,
    seed: int,
    dask_address: str | None,
    dask_workers: int | None,
    do_publish: bool,
    out: Path | None,
    stores: str,
) -> None:
    """Run the batch stage on DATA; with --publish, push u2i (with its re-ranker), i2i, popular."""
    from tandem.batch import pipeline
    from tandem.batch.publish import check_broker, publish_output
    from tandem.batch.saved import PARTS, save

    chosen = _stores(stores)
    options = _options(protocol, last_n, exclude_seen, seed, True)
    if do_publish:  # minutes of training are not spent on output nobody can receive
        check_broker(settings_of(ctx))
    on_dask = dask_address is not None or dask_workers is not None
    with _engine(dask_address, dask_workers), tempfile.TemporaryDirectory() as scratch:
        if on_dask:  # u2i written and published part by part by the workers
            parts = (out or Path(scratch)) / PARTS
            options = dataclasses.replace(options, parts_dir=parts)
        output = pipeline.run(data_dir, options)
        click.echo(output.table())
        if out is not None:
            written = save(output, out)
            click.echo(f"kept {len(written)} files in {out}: `tandem publish --from-batch {out}`")
        if do_publish:
            for line in publish_output(settings_of(ctx), output, chosen):
                click.echo(line)


@batch.command("evaluate")
@_evaluation_options
def batch_evaluate(
    data_dir: Path,
    protocol: str,
    last_n: str,
    exclude_seen: str,
    seed: int,
    dask_address: str | None,
    dask_workers: int | None,
) -> None:
    """Print the offline evaluation on DATA beside the baselines (nothing is published)."""
    from tandem.batch import pipeline

    options = _options(protocol, last_n, exclude_seen, seed, False)
    with _engine(dask_address, dask_workers):
        output = pipeline.run(data_dir, options)
    click.echo(f"protocol: {options.protocol.describe()}")
    click.echo(output.table())
    click.echo("")
    click.echo(summary(output.metrics))


def summary(metrics: dict[str, float]) -> str:
    """The targets: ranker NDCG@10 against the best baseline's, candidate recall@200 likewise."""
    best_ndcg = max(BASELINE_NAMES, key=lambda b: metrics[f"{b}_ndcg@10"])
    best_recall = max(BASELINE_NAMES, key=lambda b: metrics[f"{b}_recall@200"])
    ndcg_ratio = metrics["ranker_ndcg@10"] / max(metrics[f"{best_ndcg}_ndcg@10"], 1e-12)
    recall_ratio = metrics["candidates_recall@200"] / max(
        metrics[f"{best_recall}_recall@200"], 1e-12
    )
    return (
        f"ranker NDCG@10 / best baseline ({best_ndcg}) = {ndcg_ratio:.2f} (target ≥ 1.10)\n"
        f"candidates recall@200 / best baseline ({best_recall}) = {recall_ratio:.2f} "
        "(target ≥ 1.00)"
    )
