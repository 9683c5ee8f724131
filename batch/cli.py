"""``tandem publish``: push candidate lists as a new version of a store."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
from tqdm import tqdm

from batch.candidates_io import read_candidates, synthetic_candidates
from batch.exceptions import InputError
from batch.publish import Publisher
from tandem.schemas import MAX_CANDIDATES
from tandem.settings import Settings


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
    settings: Settings = ctx.find_root().obj
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
    if source is not None:
        rows = read_candidates(source)
        total = None
    else:
        assert synthetic is not None
        rows = synthetic_candidates(synthetic, candidates, seed)
        total = synthetic
    publisher = Publisher(settings)
    with tqdm(total=total, desc=f"publish {store}", unit="rec", disable=None) as bar:
        try:
            result = publisher.publish(
                store,
                rows,
                metadata=metadata,
                partitions=partitions,
                on_record=bar.update,
            )
        except InputError:
            raise
    click.echo(
        f"published {store} v{result.version}: {result.count} records in "
        f"{result.partitions} partitions, checksum {result.checksum} "
        f"({result.seconds:.1f} s) on topic {result.topic}"
    )
