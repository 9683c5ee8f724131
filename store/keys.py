"""Every Redis key tandem uses is built here, from one prefix.

The layout works unchanged on one Redis and on Redis Cluster. Hash tags (the part in braces
decides the slot) put together what one script or transaction touches:

- ``{prefix}``: every store's live and backup pointers, registry, per-version progress and
  attachments, and the global epoch, so a cutover flips pointer and registry in one script;
- ``{entity}``: an entity's candidate lists (all stores, all versions) and, for a user, the
  session, the cache epoch and cached answers, so one script reads what a request needs of its
  user. Entities spread over every master;
- ``{t:segment}``: a segment's per-minute trending windows and their top items, folded by one
  ZUNIONSTORE.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.contracts.ids import check_id, check_store, check_version


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one key prefix (tests use a fresh prefix each)."""

    prefix: str

    @property
    def meta(self) -> str:
        """The hash-tagged root of the version metadata (one slot)."""
        return f"{{{self.prefix}}}"

    # -- one version's entities: spread over the cluster by entity ------------------------------

    def entity(self, store: str, version: int, entity_id: str) -> str:
        """Where one entity's candidate list of one version lives."""
        return self.entity_unchecked(
            self.version_root(store, version), check_id(entity_id, "entity_id")
        )

    def entity_unchecked(self, root: str, entity_id: str) -> str:
        """Hot-path form of :meth:`entity` for ids validated at their entry point."""
        return f"{root}:e:{{{entity_id}}}"

    def version_root(self, store: str, version: int) -> str:
        """What every entity key of one version starts with."""
        return f"{self.prefix}:{check_store(store)}:v{check_version(version)}"

    def version_patterns(self, store: str, version: int) -> tuple[str, str]:
        """SCAN patterns matching every key of one version: its entities, its metadata."""
        meta = f"{self.meta}:{check_store(store)}:v{check_version(version)}"
        return f"{self.version_root(store, version)}:e:*", f"{meta}:*"

    # -- version metadata: one slot ------------------------------------------------------------

    def progress(self, store: str, version: int) -> str:
        """Hash of per-partition write progress; its presence marks a materialized version."""
        return f"{self.meta}:{check_store(store)}:v{check_version(version)}:progress"

    def rebuild(self, store: str, version: int) -> str:
        """The progress of a replay in flight; renamed over :meth:`progress` once complete."""
        return f"{self.meta}:{check_store(store)}:v{check_version(version)}:rebuild"

    def attachment(self, store: str, version: int, name: str) -> str:
        """A blob that came with a version (its re-ranker model, item categories)."""
        return f"{self.meta}:{check_store(store)}:v{check_version(version)}:a:{name}"

    def model(self, store: str, version: int) -> str:
        """The re-ranker model that went live with a version (LightGBM text)."""
        return self.attachment(store, version, "model")

    def live(self, store: str) -> str:
        """The live version pointer."""
        return f"{self.meta}:{check_store(store)}:live"

    def backup(self, store: str) -> str:
        """The version that was live before the current one (the rollback target)."""
        return f"{self.meta}:{check_store(store)}:backup"

    def canary(self, store: str) -> str:
        """The canary pointer: ``version|share_bp|shadow`` (see store/experiments.py)."""
        return f"{self.meta}:{check_store(store)}:canary"

    def experiment(self, store: str, version: int) -> str:
        """Hash of online counters of the experiment of a canary version against control."""
        return f"{self.meta}:{check_store(store)}:v{check_version(version)}:experiment"

    def online(self, store: str) -> str:
        """Hash of online counters per version and variant of a store (``version:variant:m``)."""
        return f"{self.meta}:{check_store(store)}:online"

    def registry(self, store: str) -> str:
        """Hash of version metadata, one field per version."""
        return f"{self.meta}:{check_store(store)}:versions"

    def global_epoch(self) -> str:
        """Bumped by every cutover and rollback: every cached answer becomes unreachable."""
        return f"{self.meta}:epoch-global"

    # -- a user's online state: the user's slot ------------------------------------------------

    def session(self, user_id: str) -> str:
        """The user's current session signals (written by the streams worker)."""
        return f"{self.prefix}:sess:{{{user_id}}}"

    def epoch(self, user_id: str) -> str:
        """The user's cache epoch: every event bumps it, so cached answers become unreachable."""
        return f"{self.prefix}:epoch:{{{user_id}}}"

    def cache(self, user_id: str, k: int, device: str) -> str:
        """A cached answer, stored behind the tag of the epochs and versions it was made with."""
        return f"{self.prefix}:cache:{{{user_id}}}:{k}:{device}"

    def impression(self, user_id: str, request_id: str) -> str:
        """One answer as shown to the user (for attribution), kept the attribution window."""
        return f"{self.prefix}:imp:{{{user_id}}}:{check_id(request_id, 'request_id')}"

    def last_impression(self, user_id: str) -> str:
        """The request id of the user's last impression."""
        return f"{self.prefix}:imp:{{{user_id}}}:last"

    # -- trending: the segment's slot ----------------------------------------------------------

    def trending_bucket(self, segment: str, minute: int) -> str:
        """Event counts of one segment in one minute (a tumbling window kept a few minutes)."""
        return f"{self.prefix}:trend:{{t:{segment}}}:{minute}"

    def trending(self, segment: str) -> str:
        """Top items of a segment over the recent windows (sorted set, score = event count)."""
        return f"{self.prefix}:trending:{{t:{segment}}}"

    # -- business rules (see store/hidden.py) ----------------------------------------------------

    def hidden(self) -> str:
        """Items an operator hid from every answer (a set, in the prefix's slot)."""
        return f"{self.meta}:hidden"

    def hidden_version(self) -> str:
        """Bumped by every change of :meth:`hidden`: API processes reload the set when it moves."""
        return f"{self.meta}:hidden-version"

    def user_hidden(self, user_id: str) -> str:
        """Items one user hid for themself (a set, in the user's slot)."""
        return f"{self.prefix}:uhidden:{{{user_id}}}"

    def uncached(self, user_id: str) -> str:
        """A key in the user's slot that is never written: what a request that must not be
        answered from the cache (it carries ``exclude=``) reads in place of its cached answer."""
        return f"{self.prefix}:cache:{{{user_id}}}:none"
