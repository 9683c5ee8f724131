"""Where the batch stage's chunked work runs: in this process, or on a Dask cluster.

The heavy steps (item × item Gram matrices, scoring users) are written once, as functions of a
chunk of user rows; an engine maps them over the chunks and the caller combines the partial
results (sparse partial products are summed, per-user tops concatenated). ``Local`` runs them
here; ``OnDask`` sends them to a ``distributed`` cluster, shared inputs scattered once and
each chunk scattered straight to a worker as a slot frees up (never inside the task graph, and
never all at once: a worker holds the chunks of its few running or queued tasks, not its share
of the whole input).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import scipy.sparse as sp

from tandem.batch.exceptions import BatchError

T = TypeVar("T")
ROWS_PER_CHUNK = 2048
IN_FLIGHT_PER_WORKER = 2  # chunks on a worker at once: one running, one waiting to run


class Local:
    """Runs every chunk in this process, in order."""

    def map(self, fn: Callable[..., T], chunks: Iterable[Any], **shared: Any) -> list[T]:
        """``[fn(chunk, **shared) for chunk in chunks]``."""
        return [fn(chunk, **shared) for chunk in chunks]


class OnDask:
    """Runs chunks as tasks on a ``distributed.Client``; ``shared`` inputs go out once."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.tasks = 0
        self.workers: set[str] = set()  # addresses of the workers that ran a task
        self.ranker_fits = 0  # models trained by lightgbm.dask

    def map(self, fn: Callable[..., T], chunks: Iterable[Any], **shared: Any) -> list[T]:
        """The same as ``Local.map``, each chunk a task on the cluster.

        ``chunks`` may be a generator: a chunk is made (and scattered) only when fewer than
        ``IN_FLIGHT_PER_WORKER`` per worker are in flight, so neither this process nor a
        worker ever holds every chunk."""
        from distributed import as_completed

        scattered = {
            name: self.client.scatter(value, broadcast=True, hash=False)
            for name, value in shared.items()
        }
        slots = IN_FLIGHT_PER_WORKER * max(len(self.client.scheduler_info()["workers"]), 1)
        pending = iter(enumerate(chunks))
        running = as_completed()  # type: ignore[no-untyped-call]
        order: dict[str, int] = {}
        results: dict[int, T] = {}

        def submit_next() -> None:
            for position, chunk in pending:
                [data] = self.client.scatter([chunk], hash=False)  # one future for the chunk
                future = self.client.submit(fn, data, pure=False, **scattered)
                order[future.key] = position
                running.add(future)  # type: ignore[no-untyped-call]
                return

        for _ in range(slots):
            submit_next()
        for future in running:
            for holders in self.client.who_has([future]).values():
                self.workers.update(holders)
            results[order[future.key]] = future.result()
            future.release()
            self.tasks += 1
            submit_next()
        return [results[position] for position in range(len(results))]


_current: contextvars.ContextVar[Local | OnDask | None] = contextvars.ContextVar(
    "batch_engine", default=None
)
_LOCAL = Local()


def current() -> Local | OnDask:
    """The engine of the running batch stage (``Local`` unless ``using`` says otherwise)."""
    return _current.get() or _LOCAL


@contextlib.contextmanager
def using(engine: Local | OnDask) -> Iterator[None]:
    """Run the batch stage's chunks on ``engine`` within the block."""
    token = _current.set(engine)  # reset on leaving, so engines nest
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def dask_cluster(
    address: str | None, workers: int | None, memory_limit: str = "auto"
) -> Iterator[tuple[OnDask, str]]:
    """``(engine, dashboard link)`` of the cluster at ``address``, or of a ``LocalCluster`` of
    ``workers`` processes (one thread each) started here and stopped on leaving."""
    from distributed import Client, LocalCluster

    if address is not None:
        try:
            client = Client(address, timeout="5s")  # type: ignore[no-untyped-call]
        except OSError as e:
            raise BatchError(f"no Dask scheduler answered at {address} within 5 s ({e})") from e
        with client:
            yield OnDask(client), str(client.dashboard_link)
        return
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers or 1,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield OnDask(client), str(client.dashboard_link)


def row_chunks(matrix: sp.csr_matrix, rows: int = ROWS_PER_CHUNK) -> list[sp.csr_matrix]:
    """``matrix`` cut into blocks of ``rows`` rows."""
    return [matrix[start : start + rows] for start in range(0, matrix.shape[0], rows)]


def _partial_gram(block: sp.csr_matrix) -> sp.csr_matrix:
    return (block.T @ block).tocsr()


def gram(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """``matrix.T @ matrix``, summed from the partial products of row blocks."""
    total = sp.csr_matrix((matrix.shape[1], matrix.shape[1]), dtype=matrix.dtype)
    for part in current().map(_partial_gram, row_chunks(matrix)):
        total = total + part
    return total.tocsr()
