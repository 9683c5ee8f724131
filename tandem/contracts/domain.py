"""The vocabulary of the domain, each fact once: event types and what they weigh, devices, and the
stores every deployment has."""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType


class EventType(StrEnum):
    """The kinds of interaction event (the wire format's ``event_type``)."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    LIKE = "like"
    DISLIKE = "dislike"


EVENT_TYPES = frozenset(EventType)

# How much an event says about the user's interest in an item (and its category). The session
# affinity uses these as they are; the batch stage (interaction weights, ranking labels) counts
# only interest, so a dislike weighs zero there (see ``POSITIVE_WEIGHTS``).
EVENT_WEIGHTS: MappingProxyType[str, float] = MappingProxyType(
    {
        EventType.VIEW: 1.0,
        EventType.CLICK: 2.0,
        EventType.ADD_TO_CART: 3.0,
        EventType.PURCHASE: 4.0,
        EventType.LIKE: 3.0,
        EventType.DISLIKE: -2.0,
    }
)
POSITIVE_WEIGHTS: MappingProxyType[str, float] = MappingProxyType(
    {kind: max(weight, 0.0) for kind, weight in EVENT_WEIGHTS.items()}
)

# Items a user bought or disliked are not recommended again.
EXCLUDED_EVENTS = frozenset({EventType.PURCHASE, EventType.DISLIKE})


class Device(StrEnum):
    """The devices an event or a request may name."""

    MOBILE = "mobile"
    DESKTOP = "desktop"
    TABLET = "tablet"
    TV = "tv"
    OTHER = "other"


DEVICES = frozenset(Device)
# The devices the re-ranker has a feature for (``other`` is the absence of all of them).
KNOWN_DEVICES = (Device.MOBILE, Device.DESKTOP, Device.TABLET, Device.TV)

U2I, I2I, POPULAR = "u2i", "i2i", "popular"
STORES = (U2I, I2I, POPULAR)
