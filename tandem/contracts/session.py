"""A user's current session, updated event by event, and its one encoding: the stream worker
writes it (Redis and the changelog), the API reads it, the re-ranker's training rebuilds it."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from tandem.contracts.domain import EVENT_WEIGHTS
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ranking import SessionView
from tandem.contracts.schemas import Event


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How sessions are cut and summarized."""

    gap_ms: int = 30 * 60 * 1000
    max_items: int = 20
    max_seen: int = 64
    half_life_ms: int = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class SessionState:
    """The signals of one user's current session."""

    session_id: str
    start_ms: int
    last_ms: int
    device: str | None = None
    items: tuple[tuple[str, str, int], ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    affinity: dict[str, float] = field(default_factory=dict)
    seen: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """Compact JSON, the form in Redis and in the changelog (the API decodes it with orjson)."""
        return orjson.dumps(
            {
                "sid": self.session_id,
                "start": self.start_ms,
                "last": self.last_ms,
                "dev": self.device,
                "items": self.items,
                "counts": self.counts,
                "aff": self.affinity,
                "seen": self.seen,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> SessionState:
        """Inverse of :meth:`encode`; :class:`ValidationError` when ``raw`` is not a session."""
        try:
            body = orjson.loads(raw)
            return cls(
                session_id=str(body["sid"]),
                start_ms=int(body["start"]),
                last_ms=int(body["last"]),
                device=None if body["dev"] is None else str(body["dev"]),
                items=tuple((str(i), str(t), int(ts)) for i, t, ts in body["items"]),
                counts={str(k): int(v) for k, v in body["counts"].items()},
                affinity={str(k): float(v) for k, v in body["aff"].items()},
                seen=tuple(str(s) for s in body.get("seen", ())),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValidationError("session", f"not a session record ({e!r})") from e

    def view(self) -> SessionView:
        """What ranking needs of this session."""
        return SessionView(list(self.items), dict(self.affinity), sum(self.counts.values()))


def _starts_new_session(state: SessionState, event: Event, policy: SessionPolicy) -> bool:
    if event.session_id is not None and event.session_id != state.session_id:
        return True
    return event.ts_ms - state.last_ms > policy.gap_ms


def _decayed(affinity: dict[str, float], elapsed_ms: int, half_life_ms: int) -> dict[str, float]:
    if elapsed_ms <= 0:
        return dict(affinity)
    factor = 0.5 ** (elapsed_ms / half_life_ms)
    return {k: v * factor for k, v in affinity.items() if abs(v * factor) >= 1e-3}


def update(
    state: SessionState | None, event: Event, category: str | None, policy: SessionPolicy
) -> SessionState:
    """The session after ``event`` (an event after a gap, or of another session, starts anew).

    An event whose id the session has seen recently is a re-delivery: the state is returned as
    it is (the same object), so replays after a crash do not count twice.
    """
    if state is not None and event.event_id in state.seen:
        return state
    if state is None or _starts_new_session(state, event, policy):
        sid = event.session_id or f"{event.user_id}:{event.ts_ms}"
        state = SessionState(sid, event.ts_ms, event.ts_ms)
    last_ms = max(state.last_ms, event.ts_ms)
    affinity = _decayed(state.affinity, last_ms - state.last_ms, policy.half_life_ms)
    if category is not None:
        affinity[category] = affinity.get(category, 0.0) + EVENT_WEIGHTS[event.event_type]
    counts = dict(state.counts)
    counts[event.event_type] = counts.get(event.event_type, 0) + 1
    items = (*state.items, (event.item_id, event.event_type, event.ts_ms))[-policy.max_items :]
    return SessionState(
        session_id=state.session_id,
        start_ms=state.start_ms,
        last_ms=last_ms,
        device=event.device or state.device,
        items=items,
        counts=counts,
        affinity=affinity,
        seen=(*state.seen, event.event_id)[-policy.max_seen :],
    )
