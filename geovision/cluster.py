"""Running tasks on a dask.distributed cluster: connecting, checking inputs, results in order.

``detect --scheduler/--workers`` splits one raster into bands of tile rows,
one task a band; ``batch --scheduler`` runs one task a scene. Both connect
here: to a running scheduler by its address, or to a local cluster of
worker processes made for the run and closed with it. A task whose worker
dies is run again elsewhere (Dask reschedules it, up to its
``allowed-failures``); its result arrives once, so nothing is counted
twice. Ctrl-C, SIGTERM or a failed task cancels every task still pending.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from geovision.errors import GeovisionError, RasterError, first_line, require

#: A failed task is tried this many more times (a worker lost half-way is rescheduled anyway).
RETRIES = 1


@contextlib.contextmanager
def connect(
    scheduler: str | None = None, workers: int | None = None, threads: int = 1, timeout: str = "20s"
) -> Iterator[Any]:
    """A dask.distributed ``Client``: of the cluster at ``scheduler`` (waiting ``timeout`` for it),
    or of a local cluster of ``workers`` processes with ``threads`` threads each, made now and
    closed on leaving."""
    option = "`scheduler`" if scheduler else "`workers`"
    require(option, "dask", "dask.distributed")
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise GeovisionError(f"cannot reach the Dask scheduler at {scheduler} ({e})") from e
        with client:
            yield client
        return
    cluster = LocalCluster(
        n_workers=workers or 1,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",  # this machine's own cluster: reachable from nowhere else
        dashboard_address=None,
        silence_logs=logging.CRITICAL,  # workers lose their scheduler on Ctrl-C; their errors come as results
    )
    # The cluster's scheduler runs in this process and times every garbage collection from a
    # gc callback; a Ctrl-C that lands in a callback is lost (Python prints it as ignored), so
    # the run would go on. The scheduler has no need of the timing: turn it off.
    from distributed.gc import disable_gc_diagnosis

    disable_gc_diagnosis()
    with cluster, Client(cluster) as client:
        yield client


def _can_open(raster: str) -> str:
    """On a worker: '' if it opens ``raster``, else why not (one line)."""
    import rasterio

    try:
        with rasterio.open(raster):
            return ""
    except Exception as e:  # noqa: BLE001 - any reason a worker cannot read it is reported
        return first_line(e)


def check_readable(client: Any, raster: str) -> None:
    """Refuse, before any task is sent, a raster that some worker cannot open (a local path on
    another machine, a URL a worker cannot reach)."""
    answers: dict[str, str] = client.run(_can_open, raster)
    if not answers:
        raise GeovisionError("the Dask cluster has no workers")
    failed = {worker: why for worker, why in answers.items() if why}
    if failed:
        worker, why = next(iter(failed.items()))
        raise RasterError(
            f"{raster}: {len(failed)} of {len(answers)} Dask workers cannot read it ({worker}: {why}); "
            "put it on storage every worker reaches (a shared path, or a COG URL)"
        )


def in_order(
    client: Any,
    task: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Any]:
    """``task(*a)`` for each ``a`` of ``args`` on the cluster, yielded in the order of ``args``
    as soon as each and all before it are done; ``progress(done, total)`` as tasks finish.

    Results that come early wait in this process (a band's objects, never its pixels). A task
    that fails raises its error here, and every other task is cancelled, as on Ctrl-C.
    """
    from dask.distributed import as_completed

    futures = [client.submit(task, *a, pure=False, retries=RETRIES) for a in args]
    index = {f.key: k for k, f in enumerate(futures)}
    waiting: dict[int, Any] = {}
    next_k = done = 0
    try:
        # results fetched by the client's own loop: this thread only waits, so Ctrl-C lands cleanly
        for future, result in as_completed(futures, with_results=True):
            waiting[index[future.key]] = result
            future.release()
            done += 1
            if progress:
                progress(done, len(futures))
            while next_k in waiting:
                yield waiting.pop(next_k)
                next_k += 1
    finally:
        with contextlib.suppress(RuntimeError):  # the client's loop may already be gone on Ctrl-C
            client.cancel([f for f in futures if not f.done()])


def worker_threads() -> int:
    """On a Dask worker, the model's share of its cores (one share a task it runs at once)."""
    from dask.distributed import get_worker

    from geovision.backends.device import usable_cores

    worker = get_worker()
    tasks = getattr(getattr(worker, "state", worker), "nthreads", 1) or 1
    return max(1, usable_cores() // tasks)
