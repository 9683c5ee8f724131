"""``tandem versions canary|promote``, ``tandem experiments show`` and ``tandem guard``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from tandem.contracts.ids import check_version
from tandem.shell.batch_commands import batch
from tandem.shell.clictx import (
    metrics_options,
    preflight,
    run_until_signal,
    serve_metrics,
    settings_of,
)
from tandem.shell.store_commands import _with_admin, versions

if TYPE_CHECKING:
    from tandem.contracts.settings import Settings
    from tandem.store.admin import VersionAdmin


@versions.command("canary")
@click.argument("store")
@click.argument("version")
@click.option(
    "--share",
    type=click.FloatRange(0, 100, min_open=True),
    default=10.0,
    show_default=True,
    help="Percent of users (by a stable hash of the user id) served the canary.",
)
@click.option("--shadow", is_flag=True, help="Record the canary without serving it to anyone.")
@click.pass_context
def versions_canary(
    ctx: click.Context, store: str, version: str, share: float, shadow: bool
) -> None:
    """Serve a validated VERSION of STORE to a share of users beside the live version.

    End it with `tandem versions promote STORE` or `tandem versions abort STORE VERSION`; the
    guard (`tandem guard`) does either on its own.
    """
    number = check_version(version.lstrip("v"))
    canary = _with_admin(
        settings_of(ctx),
        lambda admin: admin.start_canary(store, number, share / 100, shadow=shadow),
    )
    mode = "shadowed" if shadow else f"served to {canary.share:.2%} of users"
    click.echo(f"{store} v{canary.version}: canary, {mode}")


@versions.command("promote")
@click.argument("store")
@click.pass_context
def versions_promote(ctx: click.Context, store: str) -> None:
    """Make the canary of STORE live (the live version becomes the backup)."""
    live = _with_admin(settings_of(ctx), lambda admin: admin.promote_canary(store))
    click.echo(f"{store}: canary v{live} is live")


@click.group()
def experiments() -> None:
    """Online metrics of canaries against control."""


async def _overview(admin: VersionAdmin, settings: Settings, stores: list[str]) -> list[Any]:
    """Each store's running canary with its counters, and the online counters per version."""
    from tandem.store.experiments import CANARY, CONTROL
    from tandem.store.guards import interval

    out = []
    for store in stores:
        settings.policy(store)
        canary = await admin.experiments.canary(store)
        body: dict[str, Any] = {"store": store, "canary": None}
        if canary is not None:
            stats = await admin.experiments.counters(store, canary.version)
            body["canary"] = {
                "version": str(canary.version),
                "share": canary.share,
                "shadow": canary.shadow,
            }
            if canary.shadow:
                body["shadow"] = await admin.experiments.shadow(store, canary.version)
            for variant in (CONTROL, CANARY):
                s = stats[variant]
                variants = body.setdefault("variants", {})
                variants[variant] = {
                    **s.to_dict(),
                    "ctr_interval": interval(s.click, s.impressions),
                }
        body["online"] = await admin.experiments.online(store)
        out.append(body)
    return out


@experiments.command("show")
@click.argument("store", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.pass_context
def experiments_show(ctx: click.Context, store: str | None, as_json: bool) -> None:
    """Impressions, clicks, add-to-carts, purchases, CTR and conversion per version and
    variant, for STORE (or every store), with the running canary against control."""
    settings = settings_of(ctx)
    stores = [store] if store else sorted(settings.stores)
    found = _with_admin(settings, lambda admin: _overview(admin, settings, stores))
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    for body in found:
        click.echo(_text(body))


def _text(body: dict[str, Any]) -> str:
    lines = [f"{body['store']}:"]
    if body["canary"] is not None:
        canary = body["canary"]
        lines.append(f"  canary v{canary['version']} at {canary['share']:.2%}")
        if canary["shadow"]:
            shadow = body["shadow"]
            lines.append(
                f"    shadow: {shadow['answers']} answers, overlap with served "
                f"{shadow['overlap']}, mean {shadow['latency_ms']} ms, p99 {shadow['p99_ms']} ms"
            )
        for variant in ("control", "canary"):
            s = body["variants"][variant]
            low, high = s["ctr_interval"]
            lines.append(
                f"    {variant:<8} {s['impressions']:>8} impressions  CTR {s['ctr']:.4f} "
                f"[{low:.4f}, {high:.4f}]  conversion {s['conversion']:.4f}  "
                f"degraded {s['degraded_share']:.3f}  p99 {s['p99_ms']} ms"
            )
    lines.extend(
        f"  v{row['version']} {row['variant']:<8} {row['impressions']:>8} impressions  "
        f"{row['clicks']} clicks  {row['add_to_carts']} add-to-carts  {row['purchases']} "
        f"purchases  CTR {row['ctr']:.4f}  conversion {row['conversion']:.4f}"
        for row in body["online"]
    )
    if len(lines) == 1:
        lines.append("  (no impressions yet)")
    return "\n".join(lines)


@click.command()
@click.option(
    "--interval-s",
    type=click.FloatRange(0.1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between passes over the stores' canaries.",
)
@click.option("--once", is_flag=True, help="One pass, print its decisions as JSON, and exit.")
@click.option(
    "--give-up-s",
    type=click.FloatRange(1, 86400),
    default=60.0,
    show_default=True,
    help="Exit 1 when every pass failed for this long (Redis or Kafka unreachable).",
)
@metrics_options
@click.pass_context
def guard(
    ctx: click.Context,
    interval_s: float,
    once: bool,
    give_up_s: float,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Judge every running canary against control: abort a worse one, promote a healthy one
    after its sample, roll back a live version that breaches a health guard (guards per store
    in TANDEM_STORES: {"u2i": {"guard": {...}}})."""
    import asyncio

    from tandem.contracts.kafka import make_producer
    from tandem.store.admin import VersionAdmin
    from tandem.store.connect import connect
    from tandem.store.guards import REGISTRY, Guard

    settings = settings_of(ctx)
    if not once:
        preflight(settings)
        serve_metrics(metrics_port, metrics_host or settings.metrics_host, REGISTRY)
    policies = {store: policy.guard for store, policy in settings.stores.items()}

    async def job(stop: asyncio.Event) -> None:
        redis = connect(settings)
        producer = make_producer(settings, bulk=False)
        try:
            checker = Guard(VersionAdmin(settings, redis, producer), policies)
            if once:
                outcomes = await checker.check()
                body = [o.to_dict() for o in outcomes]
                click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
                return
            await checker.run(stop, interval_s, give_up_s)
        finally:
            await redis.aclose()
            producer.flush(10)

    run_until_signal(job)


@click.group()
def simulate() -> None:
    """Simulations of the whole system on private services."""


@simulate.command("canary")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the results to this JSON file.",
)
@click.option(
    "--users",
    type=click.IntRange(50, 1_000_000),
    default=2000,
    show_default=True,
    help="Simulated users (half of them see each canary).",
)
@click.option(
    "--min-impressions",
    type=click.IntRange(10, 1_000_000),
    default=300,
    show_default=True,
    help="Impressions per variant before the guard compares CTRs.",
)
@click.option(
    "--promote-after",
    type=click.IntRange(10, 10_000_000),
    default=800,
    show_default=True,
    help="Impressions per variant after which a healthy canary is promoted.",
)
@click.option(
    "--broker",
    type=click.Choice(["auto", "kafka", "tansu"]),
    default="auto",
    show_default=True,
    help="Which broker to start (auto: Apache Kafka if Java is installed).",
)
@click.pass_context
def simulate_canary(
    ctx: click.Context,
    json_path: Path | None,
    users: int,
    min_impressions: int,
    promote_after: int,
    broker: str,
) -> None:
    """A worse and a better canary, with simulated users clicking by a hidden preference,
    through the real API, broker, worker and guard: the worse must be aborted, the better
    promoted."""
    from tandem.shell.simulate import Spec, run

    spec = Spec(users=users, min_impressions=min_impressions, promote_after=promote_after)
    results = run(settings_of(ctx).state_dir, spec, broker)
    for name, found in results.items():
        click.echo(summary(name, found))
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if results["worse"]["outcome"] != "aborted" or results["better"]["outcome"] != "promoted":
        raise click.ClickException("the guard did not decide as expected (see above)")


def summary(name: str, found: dict[str, Any]) -> str:
    """A few lines on one simulated experiment."""
    lines = [f"{name} canary v{found['version']}: {found['outcome']} after "
             f"{found['decided_after_s']} s ({found['answers']} answers)"]  # fmt: skip
    for variant in ("control", "canary"):
        ctr = found["ctr"][variant]
        low, high = ctr["interval"]
        lines.append(
            f"  {variant:<8} {found['impressions'][variant]:>6} impressions  "
            f"{found['clicks'][variant]:>5} clicks  CTR {ctr['ctr']:.3f} [{low:.3f}, {high:.3f}]"
        )
    lines.extend(f"  why: {reason}" for reason in found["reasons"])
    return "\n".join(lines)


@batch.command("rerank-from-logs")
@click.option(
    "--wait-s",
    type=click.IntRange(1, 30 * 86400),
    default=1800,
    show_default=True,
    help="How long after an impression its events count (younger impressions wait).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the trained LightGBM model (text) here.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.pass_context
def rerank_from_logs(ctx: click.Context, wait_s: int, out_path: Path | None, seed: int) -> None:
    """Train the re-ranker from tandem.impressions joined with later events on tandem.events
    (the features served, point-in-time labels), and replay held-out impressions to compare
    it with the order served."""
    import time

    from tandem.batch.from_logs import read_logs, train_from_logs

    impressions, events = read_logs(settings_of(ctx))
    now_ms = time.time_ns() // 1_000_000
    result = train_from_logs(impressions, events, wait_s * 1000, now_ms, seed)
    click.echo(
        f"{len(impressions)} impressions, {len(events)} events: {result.sessions} labelled lists; "
        f"NDCG@10 served {result.ndcg_batch:.4f}, re-ranked {result.ndcg_rerank:.4f}"
    )
    if result.model is None:
        raise click.ClickException("too few labelled impressions to train (20 lists needed)")
    if out_path is not None:
        out_path.write_text(result.model.model_to_string())
        click.echo(f"model written to {out_path}")
