"""``tandem items hide | unhide | list`` against the real Redis and broker."""

from __future__ import annotations

import uuid

import orjson
import pytest
from click.testing import CliRunner

from tandem.contracts import topics
from tandem.contracts.hidden import decode_hidden
from tandem.contracts.settings import Settings
from tandem.shell.cli import main
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


def test_items_hide_list_unhide_and_via_kafka(settings: Settings) -> None:
    base = [
        *("--kafka", settings.kafka, "--redis-url", settings.redis_url.get_secret_value()),
        *("--prefix", settings.key_prefix, "items"),
    ]

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*base, *args])
        return result.exit_code, result.output

    assert run("hide", "x1", "x2") == (0, "x1: hidden\nx2: hidden\n")
    assert run("hide", "x1") == (0, "x1: already hidden\n")
    code, listed = run("list", "--json")
    assert (code, orjson.loads(listed)) == (0, ["x1", "x2"])
    assert run("unhide", "x2") == (0, "x2: unhidden\n")
    assert run("list") == (0, "x1\n")
    code, output = run("hide", "not an id")
    assert code == 1
    assert "ITEM: must be" in output
    item = "k" + uuid.uuid4().hex[:8]
    assert run("hide", "--via-kafka", item)[0] == 0
    sent = [decode_hidden(v) for k, v in read_topic(settings, topics.HIDDEN) if k == item.encode()]
    assert sent == [(item, True)]
