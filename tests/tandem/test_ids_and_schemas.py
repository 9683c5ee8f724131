"""The wire contracts: ids, events and candidate lists are validated with named fields."""

from __future__ import annotations

import pytest

from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id, check_store, check_version
from tandem.contracts.schemas import decode_event, parse_candidates, parse_event, parse_ts_ms
from tandem.contracts.topics import parse_version_topic, version_topic

NOW_MS = 1_790_000_000_000


@pytest.mark.parametrize(
    "value",
    ["u1", "a" * 128, "user.name@example.com", "item:42", "A-Z_09"],
)
def test_valid_ids_pass(value: str) -> None:
    assert check_id(value, "user_id") == value


@pytest.mark.parametrize(
    "value",
    ["", "a" * 129, "u 1", "u*", "u\n", "ü", "tandem:{x}", "a/b", 42, None, "key\x00"],
)
def test_forbidden_ids_are_rejected_naming_field_and_rule(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        check_id(value, "item_id")
    assert err.value.field == "item_id"
    assert "A-Z a-z 0-9" in str(err.value)


@pytest.mark.parametrize("value", ["U2I", "2store", "a" * 33, "u2i.x", "", "u2i*"])
def test_store_names_that_could_forge_a_topic_are_rejected(value: str) -> None:
    with pytest.raises(ValidationError):
        check_store(value)


@pytest.mark.parametrize("value", [0, -1, "abc", "1e3", True, 10**20, "1" * 21])
def test_bad_versions_are_rejected(value: object) -> None:
    with pytest.raises(ValidationError):
        check_version(value)


def test_version_topic_round_trip() -> None:
    topic = version_topic("u2i", 20261128120000123)
    assert topic == "tandem.store.u2i.v20261128120000123"
    assert parse_version_topic(topic) == ("u2i", 20261128120000123)
    assert parse_version_topic("tandem.events") is None


def test_event_minimal_gets_time_and_id() -> None:
    event = parse_event({"user_id": "u1", "item_id": "i1", "event_type": "click"}, NOW_MS)
    assert event.ts_ms == NOW_MS
    assert len(event.event_id) == 32


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"item_id": "i1", "event_type": "click"}, "user_id"),
        ({"user_id": "u1", "item_id": "i 1", "event_type": "click"}, "item_id"),
        ({"user_id": "u1", "item_id": "i1", "event_type": "poke"}, "event_type"),
        ({"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "yesterday"}, "ts"),
        ({"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": NOW_MS + 10**7}, "ts"),
        ({"user_id": "u1", "item_id": "i1", "event_type": "view", "device": "fridge"}, "device"),
        ({"user_id": "u1", "item_id": "i1", "event_type": "view", "session_id": ""}, "session_id"),
        ({"user_id": "u1", "item_id": "i1", "event_type": "view", "context": [1]}, "context"),
        (
            {"user_id": "u1", "item_id": "i1", "event_type": "view", "context": {"a": [1]}},
            "context.a",
        ),
        ({"user_id": "u1", "item_id": "i1", "event_type": "view", "extra": 1}, "extra"),
    ],
)
def test_bad_events_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_event(body, NOW_MS)
    assert err.value.field == field
    assert "Input should" not in err.value.rule  # tandem's wording, not pydantic's


def test_bad_choices_list_the_choices() -> None:
    with pytest.raises(ValidationError, match="must be one of add_to_cart, click, dislike"):
        parse_event({"user_id": "u1", "item_id": "i1", "event_type": "poke"}, NOW_MS)


def test_rfc3339_and_epoch_ms_agree() -> None:
    assert parse_ts_ms("2026-09-21T14:13:20Z", NOW_MS) == 1_790_000_000_000
    assert parse_ts_ms("2026-09-21T16:13:20+02:00", NOW_MS) == 1_790_000_000_000
    assert parse_ts_ms(1_789_999_999_999, NOW_MS) == 1_789_999_999_999


def test_event_json_round_trip() -> None:
    raw = (
        b'{"user_id":"u1","item_id":"i9","event_type":"purchase","ts":5,"device":"tv",'
        b'"context":{"page":"home","pos":3}}'
    )
    event = decode_event(raw, NOW_MS)
    assert decode_event(event.to_json(), NOW_MS) == event


def test_undecodable_event_names_the_event() -> None:
    with pytest.raises(ValidationError) as err:
        decode_event(b"{not json", NOW_MS)
    assert err.value.field == "event"


def test_candidate_list_validation() -> None:
    good = parse_candidates({"entity_id": "u1", "items": [{"item_id": "i1", "score": 0.5}]})
    assert good.item_ids == ["i1"]
    assert good.scores == [0.5]
    with pytest.raises(ValidationError) as err:
        parse_candidates({"entity_id": "u1", "items": [{"item_id": "i1", "score": float("nan")}]})
    assert err.value.field == "items[0].score"
    with pytest.raises(ValidationError) as err:
        parse_candidates({"entity_id": "u:1/x", "items": []})
    assert err.value.field == "entity_id"
