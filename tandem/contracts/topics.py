"""Every Kafka topic name tandem uses is built here."""

from __future__ import annotations

import re

from tandem.contracts.ids import check_store, check_version

EVENTS = "tandem.events"
VERSIONS = "tandem.versions"
DLQ = "tandem.dlq"
IMPRESSIONS = "tandem.impressions"  # every (sampled) answer, keyed by user
HIDDEN = "tandem.hidden"  # an operator's hides (tandem/contracts/hidden.py), compacted

VERSION_TOPIC_PREFIX = "tandem.store."
_VERSION_TOPIC_RE = re.compile(r"tandem\.store\.([a-z][a-z0-9_]{0,31})\.v([0-9]{1,20})")


def version_topic(store: str, version: int) -> str:
    """The topic that carries one version of one store."""
    return f"{VERSION_TOPIC_PREFIX}{check_store(store)}.v{check_version(version)}"


def version_topic_regex(stores: list[str]) -> str:
    """Subscription pattern matching the version topics of ``stores`` only."""
    names = "|".join(re.escape(check_store(s)) for s in sorted(stores))
    return rf"^tandem\.store\.({names})\.v[0-9]+$"


def parse_version_topic(topic: str) -> tuple[str, int] | None:
    """``(store, version)`` of a version topic, or None for any other topic."""
    match = _VERSION_TOPIC_RE.fullmatch(topic)
    if match is None:
        return None
    return match.group(1), int(match.group(2))
