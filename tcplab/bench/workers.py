"""
Running the load in this process or in several (C{--processes}), and adding
up what they measured.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

from tcplab.bench.address import Address
from tcplab.bench.loop import connectAll, runLoad
from tcplab.bench.plan import LoadPlan
from tcplab.bench.result import MAX_FAILURES, BenchResult, addHistogram


def _run(
    address: Address,
    plan: LoadPlan,
    connections: int,
    duration: float | None,
    requests: int | None,
    timeout: float,
    spin: bool,
    progress: Callable[[int], None] | None = None,
    ready: Callable[[], object] | None = None,
) -> BenchResult:
    # Connect, wait until every process is ready (if there are several), run.
    connected = connectAll(address, connections, timeout)
    if ready is not None:
        ready()
    result = runLoad(connected.sockets, plan, duration, requests, timeout, progress, spin, address=address)
    result.connections += len(connected.failures)
    result.connectionsMade += len(connected.sockets)
    addHistogram(result.connectLatencies, connected.latencies)
    result.failedConnections += len(connected.failures)
    result.failures = (connected.failures + result.failures)[:MAX_FAILURES]
    return result


def _worker(
    address: Address,
    plan: LoadPlan,
    connections: int,
    duration: float | None,
    requests: int | None,
    timeout: float,
    spin: bool,
    barrier: Any,
    answered: Any,
    results: Any,
) -> None:
    # One load-generating process of --processes: it sends its result back.

    def progress(count: int) -> None:
        answered.value = count

    results.put(_run(address, plan, connections, duration, requests, timeout, spin, progress, barrier.wait))


def measure(
    address: Address,
    plan: LoadPlan,
    connections: int,
    duration: float | None = None,
    requests: int | None = None,
    processes: int = 1,
    timeout: float = 10.0,
    progress: Callable[[int], None] | None = None,
    spin: bool = False,
) -> BenchResult:
    """
    Connect, run the load and gather the result, in this process or split
    over C{processes} processes (connections and requests shared out).
    """
    if processes == 1:
        return _run(address, plan, connections, duration, requests, timeout, spin, progress)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    counters = [context.Value("q", 0, lock=False) for _ in range(processes)]
    workers = [
        context.Process(
            target=_worker,
            args=(
                address,
                plan,
                _share(connections, processes, index),
                duration,
                None if requests is None else _share(requests, processes, index),
                timeout,
                spin,
                barrier,
                counters[index],
                results,
            ),
            daemon=True,
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = BenchResult()
    gathered = 0
    while gathered < processes:
        try:
            total.merge(results.get(timeout=0.1))
            gathered += 1
        except Exception:  # queue.Empty: no result yet
            if not any(worker.is_alive() for worker in workers) and results.empty():
                total.failures.append("a load-generating process died")
                break
        if progress is not None:
            progress(sum(counter.value for counter in counters))
    for worker in workers:
        worker.join()
    return total


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)
