"""``tandem publish``, ``tandem data synth`` and ``tandem batch run|evaluate``."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from tandem.contracts.domain import STORES
from tandem.contracts.schemas import MAX_CANDIDATES
from tandem.shell.clictx import settings_of


@click.command()
@click.argument("store")
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
    store: str,
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


@click.group()
def data() -> None:
    """Interaction data sets."""


@data.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--users", default=2000, show_default=True, type=click.IntRange(10, 10**7))
@click.option("--items", default=1000, show_default=True, type=click.IntRange(10, 10**7))
@click.option("--days", default=14, show_default=True, type=click.IntRange(2, 365))
@click.option(
    "--events-per-user", default=40.0, show_default=True, type=click.FloatRange(2, 10_000)
)
@click.option("--seed", default=0, show_default=True)
def data_synth(
    out: Path, users: int, items: int, days: int, events_per_user: float, seed: int
) -> None:
    """Write a synthetic data set (interactions.parquet, items.parquet) into OUT."""
    from tandem.batch.synth import SynthSpec, write

    spec = SynthSpec(users, items, days, events_per_user, seed)
    events, n_items = write(spec, out)
    click.echo(
        f"wrote {events:,} interactions of {users:,} users on {n_items:,} items "
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


@batch.command("run")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Folder with interactions.(parquet|csv) and items.*",
)
@click.option("--publish", "do_publish", is_flag=True, help="Push each store as a new version.")
@click.option("--stores", default=",".join(STORES), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def batch_run(ctx: click.Context, data_dir: Path, do_publish: bool, stores: str, seed: int) -> None:
    """Run the batch stage on DATA; with --publish, push u2i (with its re-ranker), i2i, popular."""
    from tandem.batch import pipeline
    from tandem.batch.publish import publish_output

    chosen = _stores(stores)
    output = pipeline.run(data_dir, seed=seed)
    click.echo(output.table())
    if do_publish:
        for line in publish_output(settings_of(ctx), output, chosen):
            click.echo(line)


@batch.command("evaluate")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
)
@click.option("--seed", default=0, show_default=True)
def batch_evaluate(data_dir: Path, seed: int) -> None:
    """Print the offline evaluation of a batch run on DATA (nothing is published)."""
    from tandem.batch import pipeline

    output = pipeline.run(data_dir, seed=seed)
    click.echo(output.table())
    ratio = (
        output.metrics["ranker_ndcg@10"] / output.metrics["popularity_ndcg@10"]
        if output.metrics["popularity_ndcg@10"]
        else float("inf")
    )
    click.echo(f"\nranker NDCG@10 / popularity NDCG@10 = {ratio:.2f}")
