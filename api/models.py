"""The API's request and response models: the one source of ``/openapi.json``'s schemas and of
the bounds the handlers check. Hot paths answer with orjson of plain dicts shaped like these
models (built here or in the service); cold paths may build the models themselves."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.api.rules import EXCLUDE_PATTERN, MAX_EXCLUDE, MAX_EXCLUDE_CHARS
from tandem.contracts.domain import Device
from tandem.contracts.ids import ID_MAX_LEN
from tandem.contracts.schemas import ID_PATTERN, EventBody
from tandem.contracts.versions import State

MAX_K = 200
DEFAULT_K = 20
MAX_EVENTS = 1000
REQUEST_ID_PATTERN = ID_PATTERN
REQUEST_ID_MAX_LEN = ID_MAX_LEN
STORE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
# Version ids exceed 2**53: JSON carries them as strings of digits.
VERSION_PATTERN = r"^[1-9][0-9]{0,19}$"


def version_id(version: int | None) -> str | None:
    """A version id as JSON carries it: a string (ids exceed 2**53), or null."""
    return None if version is None else str(version)


VersionId = Annotated[str, Field(pattern=VERSION_PATTERN, examples=["20261130120000123"])]
Source = Literal["u2i", "i2i", "popular"]


class Model(BaseModel):
    """A response shape: every field documented, nothing else allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RecommendationsQuery(Model):
    """Query parameters of ``GET /v1/recommendations/{user_id}``."""

    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="how many items")
    device: Device | None = Field(None, description="the device asking (a re-ranking feature)")
    exclude: str | None = Field(
        None,
        pattern=EXCLUDE_PATTERN,
        max_length=MAX_EXCLUDE_CHARS,
        description=f"up to {MAX_EXCLUDE} comma-separated item ids not to recommend (such an "
        "answer is not cached)",
    )


class Item(Model):
    """One recommended item."""

    item_id: str
    score: float
    sources: list[Source] = Field(description="the candidate stores it came from")


class UsedVersions(Model):
    """The version of each store the answer was made from (null: none was live or readable)."""

    u2i: VersionId | None
    i2i: VersionId | None
    popular: VersionId | None


class Recommendations(Model):
    """A re-ranked answer, or a degraded one (batch order, or popular items) when the deadline
    or Redis did not allow re-ranking."""

    cached: bool
    took_ms: float
    user_id: str
    items: list[Item]
    versions: UsedVersions
    reranker: str = Field(description="the model that ordered the items (or `none`)")
    degraded: bool
    degraded_reason: str | None
    variant: Literal["control", "canary"] = Field(
        "control", description="the experiment variant of this user (canary: a canary served)"
    )
    canaries: list[Source] = Field(
        default_factory=list, description="the stores whose canary version made this answer"
    )


class EventsAccepted(Model):
    """Every event was acknowledged by the broker."""

    accepted: int = Field(ge=1, le=MAX_EVENTS)
    event_ids: list[str] = Field(description="the event ids, generated where none was sent")


class StorePointers(Model):
    """A store's live and backup versions."""

    store: str
    live: VersionId | None
    backup: VersionId | None


class Stores(Model):
    """Every configured store's pointers."""

    stores: list[StorePointers]


class VersionRecord(Model):
    """What the registry knows of one version."""

    store: str
    version: VersionId
    state: State
    partitions: int
    count: int
    checksum: str | None
    created_ms: int
    updated_ms: int
    reasons: list[str]
    metadata: dict[str, object]


class StoreVersions(StorePointers):
    """A store's pointers and every recorded version, oldest first."""

    versions: list[VersionRecord]


class RolledBack(Model):
    """The store flipped back to its backup."""

    store: str
    rolled_back: VersionId | None
    live: VersionId


class CanaryRequest(BaseModel):
    """Start (or re-share) a canary: a validated version served to a share of users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: VersionId
    share: float = Field(0.1, gt=0, le=100, description="a fraction (0-1] or a percentage")
    shadow: bool = Field(False, description="compute for comparison only, never serve")


class CanaryStarted(Model):
    """The store's canary now."""

    store: str
    canary: VersionId
    share: float
    shadow: bool


class CanaryPromoted(Model):
    """The canary is live."""

    store: str
    live: VersionId


class CanaryAborted(Model):
    """The canary ended without going live (rejected, with why)."""

    store: str
    aborted: VersionId
    reasons: list[str]


class Health(Model):
    """The process is alive."""

    status: Literal["ok"]


class ReadyChecks(Model):
    """Each readiness condition."""

    redis: bool
    live_version: bool
    broker: bool
    events: bool


class Ready(Model):
    """Whether the process can serve and take events now."""

    ready: bool
    checks: ReadyChecks


class Problem(Model):
    """An error, as RFC 7807 ``application/problem+json``."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    field: str | None = Field(None, description="the request field that failed")
    index: int | None = Field(None, description="the position in a batch of the item that failed")
    request_id: str | None = None


class EventsProblem(Problem):
    """Some events were not acknowledged: send the unconfirmed ones again, same ``event_id``."""

    accepted_event_ids: list[str] = Field(default_factory=list)
    unconfirmed_event_ids: list[str] = Field(default_factory=list)


EventsRequest = EventBody | Annotated[list[EventBody], Field(min_length=1, max_length=MAX_EVENTS)]
