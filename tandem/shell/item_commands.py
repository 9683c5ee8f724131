"""``tandem items hide | unhide | list``: items an operator hides from every answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click
import orjson

from tandem.shell.clictx import settings_of

if TYPE_CHECKING:
    from tandem.contracts.settings import Settings
    from tandem.store.hidden import HiddenItems

T = TypeVar("T")
PUBLISH_TIMEOUT_S = 10.0


def _with_hidden(settings: Settings, job: Callable[[HiddenItems], Awaitable[T]]) -> T:
    """Run ``job`` with the store of hidden items."""
    import asyncio

    from tandem.store.connect import connect
    from tandem.store.hidden import HiddenItems
    from tandem.store.keys import Keys

    async def run() -> T:
        redis = connect(settings)
        try:
            return await job(HiddenItems(redis, Keys(settings.key_prefix)))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _publish(settings: Settings, item_ids: tuple[str, ...], hidden: bool) -> None:
    """Send the changes on ``tandem.hidden`` and wait until the broker has them."""
    from tandem.contracts import topics
    from tandem.contracts.exceptions import ServiceError
    from tandem.contracts.hidden import encode_hidden
    from tandem.contracts.kafka import make_producer

    producer = make_producer(settings, bulk=False)
    records = [(item.encode(), encode_hidden(item, hidden)) for item in item_ids]
    for key, value in records:
        producer.produce(topics.HIDDEN, key=key, value=value)
    if producer.flush(PUBLISH_TIMEOUT_S) > 0:
        raise ServiceError(
            f"the broker did not acknowledge {topics.HIDDEN} within {PUBLISH_TIMEOUT_S:g} s; "
            "check TANDEM_KAFKA and run the command again (it is idempotent)"
        )


def _change(ctx: click.Context, item_ids: tuple[str, ...], hidden: bool, via_kafka: bool) -> None:
    from tandem.contracts.ids import check_id

    for item in item_ids:
        check_id(item, "ITEM")
    settings = settings_of(ctx)
    word = "hidden" if hidden else "unhidden"
    if via_kafka:
        _publish(settings, item_ids, hidden)
        click.echo(f"sent {len(item_ids)} change(s) to tandem.hidden; the worker applies them")
        return

    async def job(store: HiddenItems) -> list[bool]:
        return [await store.hide(item, hidden=hidden) for item in item_ids]

    for item, changed in zip(item_ids, _with_hidden(settings, job), strict=True):
        click.echo(f"{item}: {word}" if changed else f"{item}: already {word}")


@click.group()
def items() -> None:
    """Hide items from every answer (within a second, cached answers included), or list them."""


VIA_KAFKA = click.option(
    "--via-kafka",
    is_flag=True,
    help="Send the change on tandem.hidden for the stream worker to apply, instead of writing "
    "to Redis directly.",
)


@items.command("hide")
@click.argument("item_ids", metavar="ITEM...", nargs=-1, required=True)
@VIA_KAFKA
@click.pass_context
def items_hide(ctx: click.Context, item_ids: tuple[str, ...], via_kafka: bool) -> None:
    """Hide ITEM from every user's answers."""
    _change(ctx, item_ids, True, via_kafka)


@items.command("unhide")
@click.argument("item_ids", metavar="ITEM...", nargs=-1, required=True)
@VIA_KAFKA
@click.pass_context
def items_unhide(ctx: click.Context, item_ids: tuple[str, ...], via_kafka: bool) -> None:
    """Let a hidden ITEM be recommended again."""
    _change(ctx, item_ids, False, via_kafka)


@items.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list instead of one item a line.")
@click.pass_context
def items_list(ctx: click.Context, as_json: bool) -> None:
    """The items hidden from every answer."""
    found = sorted(_with_hidden(settings_of(ctx), lambda store: store.items()))
    if as_json:
        click.echo(orjson.dumps(found).decode())
        return
    for item in found:
        click.echo(item)
    if not found:
        click.echo("(no hidden items)")
