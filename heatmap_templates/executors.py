"""Where chunks of work run: threads of this process, or the workers of a Dask cluster.

Template building and heatmap extraction split their work into fixed chunks. An executor maps a
function over the chunks and hands back the results in chunk order, and folds results together in
chunk order (:meth:`Executor.fold`), so a result does not depend on where, or in which order, the
chunks ran: a build on a cluster is bit-identical to a build in one process. A fold in order rather
than a balanced tree keeps one running result in memory (a tree holds log2(chunks) partial results,
each as large as a template's state); each combine is an exact merge that costs a few array
additions, small beside a chunk's work.

``scheduler`` (:func:`executor_for`; the CLI's ``--scheduler``):

- none (default): this process, ``threads`` chunks at a time in threads (one chunk: threads inside it);
- ``local:N``: a Dask ``LocalCluster`` of N worker processes on this machine;
- ``ADDRESS`` (``tcp://host:8786``, ...): an existing Dask scheduler, e.g. one that
  ``dask_jobqueue.SLURMCluster`` started (docs/cluster.md); from Python, pass a
  ``dask.distributed.Client`` instead.

A Dask task that fails is retried (:data:`TASK_RETRIES` times) and only its chunk is recomputed.
"""
from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, Protocol, TypeVar

from heatmap_templates.errors import HmtError

T = TypeVar("T")
TASK_RETRIES = 2  # a failed chunk task is tried this many more times before the run stops


class Executor(Protocol):
    """Runs chunk functions; results come back in chunk order."""

    description: str

    def map(self, function: Callable[..., Any], items: Sequence[Any], *arguments: Any,
            done: Callable[[Any], None] | None = None, threaded: bool = False) -> Iterator[Any]:
        """``function(item, *arguments)`` for each item: an iterator of handles in item order (see :meth:`value`);
        ``done(item)`` is called as each item's work finishes (for progress). With ``threaded``, the function also
        gets ``threads=``: how many threads it may use inside that item."""

    def fold(self, combine: Callable[[Any, Any], Any], handles: Iterable[Any]) -> Any:
        """``combine(...combine(combine(v0, v1), v2)..., vn)`` of the handles' values, in order (``combine`` may
        modify its first argument)."""

    def value(self, handle: Any) -> Any:
        """The value behind a handle from :meth:`map`."""

    def close(self) -> None:
        """Release what the executor started."""


class LocalExecutor:
    """This process: up to ``threads`` chunks at a time, each in a thread of its own (numpy, OpenCV and h5py
    release the GIL), their results handed back in chunk order. At most ``threads`` chunks are in flight, so memory
    holds that many chunks' results beside the running total. A chunk started when fewer chunks are left than threads
    may use the spare threads inside itself: the last of three chunks on two threads would otherwise run alone on one
    (a quarter of a 1525-image build's time)."""

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise HmtError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.description = f"this process ({threads} thread{'s' if threads > 1 else ''})"

    def inner_threads(self, index: int, items: int) -> int:
        """Threads item ``index`` of ``items`` may use inside itself: the chunks that start together share the threads;
        one started later shares them with the chunks not yet started (the running ones are about to finish)."""
        sharing = min(self.threads, items) if index < self.threads else min(self.threads, items - index)
        return max(1, self.threads // max(1, sharing))

    def map(self, function: Callable[..., Any], items: Sequence[Any], *arguments: Any,
            done: Callable[[Any], None] | None = None, threaded: bool = False) -> Iterator[Any]:
        def call(index: int, item: Any) -> Any:
            return function(item, *arguments, threads=self.inner_threads(index, len(items))) if threaded else function(item, *arguments)

        workers = min(self.threads, len(items))
        if workers <= 1:
            for index, item in enumerate(items):
                result = call(index, item)
                if done is not None:
                    done(item)
                yield result
            return
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            waiting = iter(enumerate(items))
            running = deque((item, pool.submit(call, index, item)) for index, item in islice(waiting, workers))
            while running:
                item, future = running.popleft()
                result = future.result()
                if (following := next(waiting, None)) is not None:  # keep every thread busy while the caller folds
                    running.append((following[1], pool.submit(call, *following)))
                if done is not None:
                    done(item)
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def fold(self, combine: Callable[[Any, Any], Any], handles: Iterable[Any]) -> Any:
        return _fold(combine, handles)

    def value(self, handle: Any) -> Any:
        return handle

    def close(self) -> None:
        return None




def _fold(combine: Callable[[T, T], T], items: Iterable[T]) -> T:
    """Left fold of ``items`` in order; HmtError for none."""
    iterator = iter(items)
    try:
        value = next(iterator)
    except StopIteration:
        raise HmtError("nothing to combine") from None
    for item in iterator:
        value = combine(value, item)
    return value


def _copy_first(combine: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``combine`` on a copy of its first argument: a Dask worker keeps task inputs, and a retried task must
    not see them modified."""

    def combined(first: Any, second: Any) -> Any:
        return combine(copy.deepcopy(first), second)

    return combined


class DaskExecutor:
    """The workers of a Dask cluster: every chunk a task (retried on failure), the combines on the workers too,
    so only the final result travels to this process."""

    def __init__(self, client: Any, *, owns_client: bool = False) -> None:  # client: dask.distributed.Client
        self.client = client
        self._owns_client = owns_client
        workers = len(client.scheduler_info().get("workers", {}))
        self.description = f"Dask at {client.scheduler.address} ({workers} worker{'s' if workers != 1 else ''})"

    def map(self, function: Callable[..., Any], items: Sequence[Any], *arguments: Any,
            done: Callable[[Any], None] | None = None, threaded: bool = False) -> Iterator[Any]:
        # threaded: each task uses one thread (the function's default); a worker's threads are the cluster's business.
        # Arguments shared by every chunk (reference frame, settings, template sums) go to every worker once.
        scattered = [self.client.scatter([argument], broadcast=True)[0] for argument in arguments]
        futures = []
        for item in items:
            future = self.client.submit(function, item, *scattered, retries=TASK_RETRIES, pure=False)
            if done is not None:
                future.add_done_callback(lambda _, item=item: done(item))
            futures.append(future)
        return iter(futures)

    def fold(self, combine: Callable[[Any, Any], Any], handles: Iterable[Any]) -> Any:
        merge = _copy_first(combine)
        final = _fold(lambda left, right: self.client.submit(merge, left, right, retries=TASK_RETRIES, pure=False), handles)
        return final.result() if hasattr(final, "result") else final

    def value(self, handle: Any) -> Any:
        return handle.result()

    def close(self) -> None:
        if self._owns_client:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()


def executor_for(scheduler: str | Any | None, *, threads: int = 1) -> Executor:
    """The executor of a ``scheduler`` value (see the module docstring), or of a ``dask.distributed.Client``."""
    if scheduler is None or scheduler == "":
        return LocalExecutor(threads)
    if not isinstance(scheduler, str):
        return DaskExecutor(scheduler)
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as error:
        raise HmtError("$scheduler needs Dask: pip install 'dask[distributed]'", parameters=("scheduler",)) from error
    if scheduler.startswith("local:"):
        count = scheduler.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise HmtError(f"$scheduler: local:N needs a number of workers N >= 1, got {scheduler!r}", parameters=("scheduler",))
        cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True, dashboard_address=None)
        return DaskExecutor(Client(cluster), owns_client=True)
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as error:
        raise HmtError(f"$scheduler: cannot reach a Dask scheduler at {scheduler} ({error})", parameters=("scheduler",)) from None
    return DaskExecutor(client, owns_client=True)
