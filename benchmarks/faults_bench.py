"""``python -m benchmarks faults``: the faults production brings, one at a time, under load.

One Apache Kafka node and one redis-server (append-only file on, so a restart keeps its data,
as a production Redis does) are started on free ports, and ``tandem serve``, ``tandem worker``
and ``tandem materialize`` run as their own processes, as an operator runs them. For each
scenario, events are POSTed to the API (100 events/s, ids of our own) and recommendations read
(50 req/s) while the fault happens; then the load stops and every acknowledged event is looked
for in Redis. One row per scenario:

- ``acknowledged``: events the API accepted (202, or listed as accepted in a 503); for the
  materializer, the version's records; for the replay, the answers served; for the late
  record, the one record appended;
- ``lost``: acknowledged but never applied (a session without the event, a version short of
  records, an answer with no candidates, a record neither applied nor dead-lettered);
- ``duplicated``: applied twice (a session counting the event twice, a version with more
  records than pushed, a late record that changed a live version);
- ``recovered_s``: seconds from the fault's end (the service back, the process restarted by
  the supervisor, the replay finished) until the system is healthy again with no restart of
  ours: ``/readyz`` answers 200, a new event is accepted and reaches its session in Redis, and
  a recommendation has candidates. Empty if that never happened within the bound.

The Tansu broker keeps its data in memory (a restart loses every topic), so this suite needs
Apache Kafka (Java 17+ and Maven). The leader failover runs on a three-node cluster of its own
(replication factor 3, ``min.insync.replicas`` 2); its fault ends when the node is killed (the
other two carry on without it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.publish import Publisher, PushResult
from tandem.contracts import codec, topics
from tandem.contracts.control import DLQ_TOPIC, record_headers
from tandem.contracts.domain import U2I
from tandem.contracts.exceptions import ServiceError, WaitTimeout
from tandem.contracts.kafka import admin, ensure_base_topics, make_consumer, make_producer
from tandem.contracts.session import SessionState
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.contracts.waiting import wait_for
from tandem.shell import devservices, kafka_broker, processes
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.registry import Registry
from tandem.store.writer import VersionWriter

EVENTS_PER_POST = 5
POST_INTERVAL_S = 0.05  # 100 events/s
READ_INTERVAL_S = 0.02  # 50 reads/s
OUTAGE_S = 5.0  # how long a stopped or paused service stays away
BEFORE_S = 3.0  # load before the fault
AFTER_S = 5.0  # load after the fault's end
RECOVERY_BOUND_S = 60.0
SETTLE_S = 60.0  # for acknowledged events to reach Redis once the load stops
USERS = 2000  # entities of the live u2i version the reads ask for
BIG_VERSION = 30_000  # records of the version the materializer is killed in
HTTP_TIMEOUT_S = 10.0


@dataclass
class Row:
    """One scenario's outcome."""

    scenario: str
    acknowledged: int
    lost: int
    duplicated: int
    recovered_s: float | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.recovered_s is not None
            and self.recovered_s <= 15
        )


# --------------------------------------------------------------------------- services


@dataclass
class Redis:
    """A durable redis-server of our own (see ``devservices.start_redis``) that can be
    stopped, started again on the same port and folder, and paused."""

    port: int
    folder: Path
    started: devservices.Started | None = None

    def start(self) -> None:
        self.started = devservices.start_redis(self.port, self.folder, 20, durable=True)

    def stop(self) -> None:
        if self.started is not None:
            devservices.stop(self.started.pid, 20)
            self.started = None

    def signal(self, sig: signal.Signals) -> None:
        assert self.started is not None
        os.kill(self.started.pid, sig)


@dataclass
class System:
    """The services and tandem's processes, with the operations a fault needs."""

    folder: Path
    kafka: kafka_broker.KafkaCluster
    redis: Redis
    settings: Settings
    port: int = field(default_factory=devservices.free_port)
    app_id: str = field(default_factory=lambda: "faults" + uuid.uuid4().hex[:6])
    components: dict[str, processes.Component] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def node(self) -> kafka_broker.KafkaNode:
        return self.kafka.nodes[0]

    def args(self, name: str) -> list[str]:
        return {
            "serve": ["serve", "--port", str(self.port)],
            "worker": ["worker", "--app-id", self.app_id, "--session-gap-s", "3600"],
            "materialize": ["materialize"],
        }[name]

    def start(self, name: str) -> None:
        self.components[name] = processes.start(
            name, self.args(name), self.settings, self.folder / "logs"
        )

    def kill(self, name: str) -> None:
        component = self.components[name]
        component.proc.kill()
        component.proc.wait(10)

    def check(self) -> None:
        """Raise with its log if a process exited by itself (none may, whatever the fault)."""
        for component in self.components.values():
            component.check()

    def stop(self) -> None:
        for component in reversed(list(self.components.values())):
            component.stop()

    def restart_broker(self) -> None:
        kafka_broker.stop_node(self.node)
        time.sleep(OUTAGE_S)  # the outage itself, not a wait for state
        node = kafka_broker.start_node_again(self.node)
        self.kafka = kafka_broker.KafkaCluster((node,), self.kafka.version)

    def pause_broker(self) -> None:
        os.kill(self.node.pid, signal.SIGSTOP)
        try:
            time.sleep(OUTAGE_S)
        finally:
            os.kill(self.node.pid, signal.SIGCONT)

    def restart_redis(self) -> None:
        self.redis.stop()
        time.sleep(OUTAGE_S)
        self.redis.start()

    def kill_events_leader(self) -> None:
        """SIGKILL the node leading most partitions of tandem.events (it stays down: the
        other two, with min.insync.replicas 2, must carry on)."""
        found = admin(self.settings).list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
        leaders = collections.Counter(p.leader for p in found.partitions.values())
        victim = leaders.most_common(1)[0][0]
        kafka_broker.kill_node(next(n for n in self.kafka.nodes if n.node_id == victim))

    def pause_redis(self) -> None:
        self.redis.signal(signal.SIGSTOP)
        try:
            time.sleep(OUTAGE_S)
        finally:
            self.redis.signal(signal.SIGCONT)


@contextlib.contextmanager
def system(nodes: int = 1) -> Iterator[System]:
    """Kafka (``nodes`` KRaft nodes, replication factor 3 on three), Redis and tandem's three
    processes, stopped on the way out."""
    problem = kafka_broker.java_problem()
    if problem is not None:
        raise ServiceError(f"the fault suite needs Apache Kafka: {problem}")
    with tempfile.TemporaryDirectory(prefix="tandem-faults-") as tmp:
        folder = Path(tmp)
        cluster = devservices.start_kafka_nodes(folder / "kafka", nodes)
        redis = Redis(devservices.free_port(), folder / "redis")
        sys_: System | None = None
        try:
            redis.start()
            settings = Settings.load(
                kafka=cluster.bootstrap,
                redis_url=f"redis://127.0.0.1:{redis.port}/0",
                admin_token="faults-" + uuid.uuid4().hex,
                replication_factor=min(3, nodes),
                state_dir=folder / "state",
            )
            ensure_base_topics(settings)
            sys_ = System(folder, cluster, redis, settings)
            for name in ("materialize", "worker", "serve"):
                sys_.start(name)
            yield sys_
        finally:
            if sys_ is not None:
                sys_.stop()
                cluster = sys_.kafka  # its node's pid changes with a restart
            redis.stop()
            with contextlib.suppress(kafka_broker.BrokerError):
                kafka_broker.stop_kafka(cluster)


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """Events with ids of our own, one new user each, and reads of the live version's users."""

    http: aiohttp.ClientSession
    url: str
    run: str = field(default_factory=lambda: "f" + uuid.uuid4().hex[:6])
    accepted: list[str] = field(default_factory=list)
    posts: int = 0
    post_errors: int = 0
    reads: int = 0
    empty_reads: int = 0
    read_errors: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._steady(POST_INTERVAL_S, self._post)),
            asyncio.create_task(self._steady(READ_INTERVAL_S, self._read)),
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _steady(self, interval: float, one: Callable[[int], Awaitable[None]]) -> None:
        """``one(n)`` every ``interval`` on its own task (a slow answer does not slow the rate)."""
        loop = asyncio.get_running_loop()
        began, n = loop.time(), 0
        running: set[asyncio.Future[None]] = set()
        while not self._stop.is_set():
            task = asyncio.ensure_future(one(n))
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
            await asyncio.sleep(max(0.0, began + n * interval - loop.time()))
        if running:
            await asyncio.wait(running)

    async def _post(self, n: int) -> None:
        ids = [f"{self.run}-{n}-{k}" for k in range(EVENTS_PER_POST)]
        body = [
            {
                "user_id": f"{self.run}u{n}x{k}",
                "item_id": "i1",
                "event_type": "click",
                "event_id": event_id,
            }
            for k, event_id in enumerate(ids)
        ]
        self.posts += 1
        try:
            async with self.http.post(self.url + "/v1/events", data=orjson.dumps(body)) as r:
                answer = orjson.loads(await r.read()) if r.content_type.endswith("json") else {}
                if r.status == 202:
                    self.accepted += answer.get("event_ids", ids)
                else:
                    self.post_errors += 1
                    self.failures[f"post {r.status}"] += 1
                    self.accepted += answer.get("accepted_event_ids", [])
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as e:
            self.post_errors += 1
            self.failures[f"post {type(e).__name__}"] += 1

    async def _read(self, _n: int) -> None:
        user = f"u{random.randrange(USERS)}"
        self.reads += 1
        try:
            async with self.http.get(f"{self.url}/v1/recommendations/{user}?k=10") as r:
                if r.status != 200:
                    self.read_errors += 1
                    self.failures[f"read {r.status}"] += 1
                    return
                answer = orjson.loads(await r.read())
                if not answer.get("items"):
                    self.empty_reads += 1
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as e:
            self.read_errors += 1
            self.failures[f"read {type(e).__name__}"] += 1


def _user_of(event_id: str) -> str:
    run, n, k = event_id.split("-")
    return f"{run}u{n}x{k}"


async def applied(sys_: System, event_ids: list[str]) -> tuple[int, int]:
    """Of ``event_ids`` (one user each, one click each): (missing from Redis, counted twice),
    once every one is there or ``SETTLE_S`` has passed."""
    redis = connect(sys_.settings)
    keys = Keys(sys_.settings.key_prefix)

    async def count() -> tuple[int, int]:
        missing = twice = 0
        for start in range(0, len(event_ids), 500):
            pipe = redis.pipeline(transaction=False)
            chunk = event_ids[start : start + 500]
            for event_id in chunk:
                pipe.get(keys.session(_user_of(event_id)))
            for raw in await pipe.execute():
                if not isinstance(raw, bytes):
                    missing += 1
                elif SessionState.decode(raw).counts.get("click", 0) > 1:
                    twice += 1
        return missing, twice

    async def settled() -> tuple[int, int] | None:
        found = await count()
        return found if found[0] == 0 else None

    try:
        try:
            return await wait_for(settled, SETTLE_S, "acknowledged events to reach Redis")
        except WaitTimeout:
            return await count()
    finally:
        await redis.aclose()


async def healthy_after(sys_: System, http: aiohttp.ClientSession, since: float) -> float | None:
    """Seconds from ``since`` until the system is healthy (see the module), or None."""
    redis = connect(sys_.settings)
    keys = Keys(sys_.settings.key_prefix)
    probe = "probe" + uuid.uuid4().hex[:8]
    sent = False

    async def healthy() -> bool:
        nonlocal sent
        for component in sys_.components.values():
            component.check()
        try:
            async with http.get(sys_.url + "/readyz") as r:
                if r.status != 200:
                    return False
            if not sent:
                event = {"user_id": probe, "item_id": "i1", "event_type": "view", "event_id": probe}
                async with http.post(sys_.url + "/v1/events", data=orjson.dumps(event)) as r:
                    sent = r.status == 202
                    if not sent:
                        return False
            if await redis.get(keys.session(probe)) is None:
                return False
            async with http.get(sys_.url + "/v1/recommendations/u1?k=10") as r:
                return r.status == 200 and bool(orjson.loads(await r.read()).get("items"))
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
            return False
        except Exception as e:  # Redis down: not healthy yet
            if type(e).__module__.startswith("redis"):
                return False
            raise

    try:
        await wait_for(healthy, RECOVERY_BOUND_S, "the system to be healthy")
    except WaitTimeout:
        return None
    finally:
        await redis.aclose()
    return round(time.monotonic() - since, 1)


# --------------------------------------------------------------------------- scenarios


async def under_load(
    sys_: System, http: aiohttp.ClientSession, name: str, fault: Callable[[], None]
) -> Row:
    """Load, ``fault()`` (blocking, in a thread; it returns when the fault ends), load, then
    count what the acknowledged events became."""
    load = Load(http, sys_.url)
    load.start()
    await asyncio.sleep(BEFORE_S)  # steady load before the fault (a rate, not a wait for state)
    await asyncio.to_thread(fault)
    ended = time.monotonic()
    recovered = await healthy_after(sys_, http, ended)
    await asyncio.sleep(AFTER_S)
    await load.stop()
    missing, twice = await applied(sys_, load.accepted)
    note = (
        f"{load.posts} posts ({load.post_errors} refused), {load.reads} reads "
        f"({load.read_errors} failed, {load.empty_reads} empty)"
    )
    if load.failures:
        note += "; " + ", ".join(f"{what} ×{n}" for what, n in load.failures.most_common(4))
    return Row(name, len(load.accepted), missing, twice, recovered, note)


def killed(sys_: System, name: str) -> Callable[[], None]:
    def fault() -> None:
        sys_.kill(name)
        sys_.start(name)  # the supervisor restarts it at once

    return fault


def publish(settings: Settings, records: int, seed: int, prefix: str = "u") -> PushResult:
    with Publisher(settings) as publisher:
        return publisher.publish(U2I, synthetic_candidates(records, 20, seed=seed, prefix=prefix))


async def live_version(sys_: System, version: int, bound_s: float = 120) -> int:
    """The count of ``version`` once it is live (the registry's), or -1 if it was rejected."""
    redis = connect(sys_.settings)
    registry = Registry(redis, Keys(sys_.settings.key_prefix))

    async def probe() -> int | None:
        sys_.check()
        info = await registry.get(U2I, version)
        if info is not None and info.state is State.REJECTED:
            return -1
        return info.count if info is not None and info.state is State.LIVE else None

    try:
        return await wait_for(probe, bound_s, f"{U2I} v{version} to go live")
    finally:
        await redis.aclose()


async def kill_materializer(sys_: System, http: aiohttp.ClientSession) -> Row:
    """SIGKILL the materializer once it has applied part of a big version; restart it."""
    redis = connect(sys_.settings)
    keys = Keys(sys_.settings.key_prefix)
    pushed: list[PushResult] = []
    push = threading.Thread(
        target=lambda: pushed.append(publish(sys_.settings, BIG_VERSION, 7, "u")), daemon=True
    )
    push.start()

    async def partly_applied() -> bool:
        registry = Registry(redis, keys)
        for info in await registry.list(U2I):
            if info.state is State.INGESTING:
                progress = await VersionWriter(redis, keys, U2I, info.version).load_all()
                if sum(p.count for p in progress.values()) > 0:
                    return True
        return False

    try:
        await wait_for(partly_applied, 120, "the materializer to start on the big version")
    finally:
        await redis.aclose()
    sys_.kill("materialize")
    sys_.start("materialize")
    restarted = time.monotonic()
    await asyncio.to_thread(push.join, 120)
    if not pushed:
        raise RuntimeError("the big version's push did not finish")
    count = await live_version(sys_, pushed[0].version)
    recovered = round(time.monotonic() - restarted, 1)
    if count < 0:
        return Row(
            "SIGKILL materializer mid-version", BIG_VERSION, BIG_VERSION, 0, None, "rejected"
        )
    return Row(
        "SIGKILL materializer mid-version",
        sum(pushed[0].counts),
        max(0, sum(pushed[0].counts) - count),
        max(0, count - sum(pushed[0].counts)),
        recovered,
        f"v{pushed[0].version} live with {count} records",
    )


async def replay_live(sys_: System, http: aiohttp.ClientSession) -> Row:
    """Replay the live u2i version (with cutover) while reads run: an answer with no
    candidates is lost."""
    redis = connect(sys_.settings)
    try:
        raw = await redis.get(Keys(sys_.settings.key_prefix).live(U2I))
    finally:
        await redis.aclose()
    if raw is None:
        raise RuntimeError(f"{U2I} has no live version to replay")
    version = int(raw)
    load = Load(http, sys_.url)
    load.start()
    await asyncio.sleep(BEFORE_S)
    replay = processes.start(
        "replay",
        ["replay", U2I, "--version", str(version), "--cutover"],
        sys_.settings,
        sys_.folder / "logs",
    )
    code = await asyncio.to_thread(replay.proc.wait, 300)
    ended = time.monotonic()
    recovered = await healthy_after(sys_, http, ended) if code == 0 else None
    await asyncio.sleep(AFTER_S)
    await load.stop()
    note = f"replay exit {code}; {load.reads} reads, {load.read_errors} failed"
    return Row("replay of the live version", load.reads, load.empty_reads, 0, recovered, note)


async def late_record(sys_: System, http: aiohttp.ClientSession) -> Row:
    """Append a record to the live version's topic after its END_OF_PUSH: it must be
    dead-lettered and change nothing served."""
    redis = connect(sys_.settings)
    keys = Keys(sys_.settings.key_prefix)
    try:
        version = int(await redis.get(keys.live(U2I)) or 0)
        before = await redis.get(keys.entity(U2I, version, "u3"))
        registry = Registry(redis, keys)
        count_before = (await registry.get(U2I, version)).count  # type: ignore[union-attr]
        topic = topics.version_topic(U2I, version)
        producer = make_producer(sys_.settings, bulk=False)
        producer.produce(
            topic,
            key=b"u3",
            value=codec.encode(["late"], [9.0]),
            partition=0,
            headers=record_headers(U2I, version),
        )
        if producer.flush(10) != 0:
            raise RuntimeError("the late record was not delivered")
        appended = time.monotonic()
        dead = await wait_for(
            lambda: asyncio.to_thread(dead_lettered, sys_.settings, topic),
            60,
            "the late record to be dead-lettered",
        )
        after = await redis.get(keys.entity(U2I, version, "u3"))
        count_after = (await registry.get(U2I, version)).count  # type: ignore[union-attr]
    finally:
        await redis.aclose()
    recovered = await healthy_after(sys_, http, appended)
    changed = int(after != before or count_after != count_before)
    return Row(
        "record after END_OF_PUSH",
        1,
        int(not dead and not changed),
        changed,
        recovered,
        f"dead-lettered: {dead}",
    )


def dead_lettered(settings: Settings, source_topic: str) -> bool:
    """Whether tandem.dlq holds a record from ``source_topic``."""
    consumer = make_consumer(settings, "faults" + uuid.uuid4().hex[:6])
    try:
        meta = consumer.list_topics(topics.DLQ, timeout=10).topics[topics.DLQ]
        consumer.assign([TopicPartition(topics.DLQ, p, OFFSET_BEGINNING) for p in meta.partitions])
        deadline = time.monotonic() + 10
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topics.DLQ, p), timeout=10)[1]
            for p in meta.partitions
        }
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(ends) and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"reading {topics.DLQ}: {error}")
            if dict(msg.headers() or []).get(DLQ_TOPIC) == source_topic.encode():
                return True
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                done.add(msg.partition() or 0)
        return False
    finally:
        consumer.close()


# --------------------------------------------------------------------------- the suite

SCENARIOS = (
    "broker-restart",
    "broker-pause",
    "redis-restart",
    "redis-pause",
    "kill-api",
    "kill-worker",
    "kill-materializer",
    "replay-live",
    "late-record",
    "leader-killed",
)
ON_THREE_NODES = frozenset({"leader-killed"})


async def run(only: tuple[str, ...] = SCENARIOS, echo: Callable[[str], None] = print) -> list[Row]:
    """Every scenario of ``only``, in order: those of one node on one system, the leader
    failover on a three-node cluster of its own; a row each."""
    rows: list[Row] = []
    for nodes, names in (
        (1, [n for n in only if n not in ON_THREE_NODES]),
        (3, [n for n in only if n in ON_THREE_NODES]),
    ):
        if names:
            rows += await _run_on(nodes, names, echo)
    return rows


async def _run_on(nodes: int, names: list[str], echo: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    echo(f"starting Apache Kafka ({nodes} node{'s' if nodes > 1 else ''}), Redis and tandem")
    with system(nodes) as sys_:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            first = await asyncio.to_thread(publish, sys_.settings, USERS, 1)
            if await live_version(sys_, first.version) < 0:
                raise RuntimeError("the first version was rejected")
            if await healthy_after(sys_, http, time.monotonic()) is None:
                raise RuntimeError(f"tandem did not become healthy; see {sys_.folder}/logs")
            plans: dict[str, Callable[[], Awaitable[Row]]] = {
                "broker-restart": lambda: under_load(
                    sys_, http, "broker restart", sys_.restart_broker
                ),
                "broker-pause": lambda: under_load(sys_, http, "broker pause", sys_.pause_broker),
                "redis-restart": lambda: under_load(
                    sys_, http, "Redis restart", sys_.restart_redis
                ),
                "redis-pause": lambda: under_load(sys_, http, "Redis pause", sys_.pause_redis),
                "kill-api": lambda: under_load(sys_, http, "SIGKILL API", killed(sys_, "serve")),
                "kill-worker": lambda: under_load(
                    sys_, http, "SIGKILL worker", killed(sys_, "worker")
                ),
                "kill-materializer": lambda: kill_materializer(sys_, http),
                "replay-live": lambda: replay_live(sys_, http),
                "late-record": lambda: late_record(sys_, http),
                "leader-killed": lambda: under_load(
                    sys_, http, "events leader SIGKILLed (3 nodes)", sys_.kill_events_leader
                ),
            }
            for name in names:
                echo(f"scenario {name} ...")
                row = await plans[name]()
                echo(f"  {asdict(row)}")
                rows.append(row)
    return rows


def markdown(rows: list[Row], machine: str) -> str:
    lines = [
        "## Faults under load (`python -m benchmarks faults`)",
        "",
        f"Machine: {machine}. Apache Kafka (one KRaft node; three for the leader failover), "
        "redis-server with an "
        "append-only file; `tandem serve`, `worker` and `materialize` as their own processes; "
        f"{OUTAGE_S:g} s "
        f"outages; load {EVENTS_PER_POST / POST_INTERVAL_S:.0f} events/s (one new user each) "
        f"and {1 / READ_INTERVAL_S:.0f} reads/s.",
        "",
        "| scenario | acknowledged | lost | duplicated | recovered_s | notes |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        recovered = "" if row.recovered_s is None else f"{row.recovered_s:.1f}"
        lines.append(
            f"| {row.scenario} | {row.acknowledged} | {row.lost} | {row.duplicated} "
            f"| {recovered} | {row.note} |"
        )
    bad = [row.scenario for row in rows if not row.ok]
    lines += [
        "",
        "Target: every row lost 0, duplicated 0, recovered_s ≤ 15: "
        + ("**met**." if not bad else f"**not met** by {', '.join(bad)}."),
    ]
    return "\n".join(lines)
