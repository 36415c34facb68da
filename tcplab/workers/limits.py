"""
C{--max-connections} and C{--max-per-peer} across worker processes: counts
in a shared memory table that every worker updates under one lock.

With N workers the limits hold for the server as a whole, as they do for one
process: C{--max-per-peer 1} means one connection per client address however
the kernel spreads the connections.  Each worker counts its own connections
in a column of its own, so that when a worker dies the supervisor clears
exactly what that worker held (L{ConnectionTable.forget}).

Layout of the shared memory (native int32s): one total per worker, then
C{capacity} entries of a 16-byte key (a hash of the peer's host; all zeros:
an empty entry) followed by one count per worker.  The table is an
open-addressing hash table with linear probing; an entry whose counts all
fall to zero is deleted with backward shifting (Knuth's algorithm R), so no
tombstones build up.  The per-peer table is kept only with C{maxPerPeer}.
The lock is a POSIX record lock (C{lockf}) on the memory's file: held by a
process, released by the kernel if that process dies.

Cost: two C{lockf} calls and a few C{struct} reads per connection, at
connect and at close; nothing per message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator

#: Entries of the per-peer table when C{--max-connections} is 0 (no limit);
#: with a limit, twice that many (every live entry holds a connection).
UNLIMITED_CAPACITY = 1 << 16

_KEY = 16
_EMPTY = bytes(_KEY)


def capacityFor(maxConnections: int) -> int:
    """
    @return: a power of two at least twice C{maxConnections} (so the table
        is never more than half full), or L{UNLIMITED_CAPACITY}.
    """
    if not maxConnections:
        return UNLIMITED_CAPACITY
    capacity = 64
    while capacity < 2 * maxConnections:
        capacity *= 2
    return capacity


class ConnectionTable:
    """
    Connection counts shared by C{workers} processes through the memory of
    file descriptor C{fileno}.

    @ivar maxConnections: connections all workers may hold at once (0: no limit).
    @ivar maxPerPeer: connections one host may hold at once across all
        workers (0: no limit, and no per-peer table).
    """

    def __init__(self, fileno: int, workers: int, maxConnections: int, maxPerPeer: int, capacity: int) -> None:
        self.fileno = fileno
        self.workers = workers
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
        self.capacity = capacity if maxPerPeer else 0
        self._counts = struct.Struct(f"={workers}i")
        self._entry = _KEY + self._counts.size
        self._table = self._counts.size
        self._memory = mmap.mmap(fileno, self.size(workers, self.capacity))

    @staticmethod
    def size(workers: int, capacity: int) -> int:
        """
        @return: the bytes of shared memory a table of C{capacity} entries takes.
        """
        counts = 4 * workers
        return max(mmap.PAGESIZE, counts + capacity * (_KEY + counts))

    @classmethod
    def create(cls, workers: int, maxConnections: int, maxPerPeer: int) -> ConnectionTable:
        """
        @return: a new, empty table in a new memory file (inherited by the
            workers at C{fileno}).
        """
        capacity = capacityFor(maxConnections) if maxPerPeer else 0
        fileno = os.memfd_create("tcplab-connections")
        os.ftruncate(fileno, cls.size(workers, capacity))
        return cls(fileno, workers, maxConnections, maxPerPeer, capacity)

    def close(self) -> None:
        self._memory.close()
        os.close(self.fileno)

    def acquire(self, worker: int, host: str | None) -> str | None:
        """
        Count a connection from C{host} in C{worker}, if the limits allow.

        @return: L{None} if counted; else C{"busy"} or C{"peer"}, the limit reached.
        """
        with self._locked():
            totals = self._counts.unpack_from(self._memory, 0)
            if self.maxConnections and sum(totals) >= self.maxConnections:
                return "busy"
            if self.maxPerPeer:
                key = _keyOf(host or "")
                index, found = self._find(key)
                if found:
                    if sum(self._entryCounts(index)) >= self.maxPerPeer:
                        return "peer"
                elif index is None:
                    return "busy"  # Every entry taken: as many peers as the table holds.
                else:
                    self._memory[self._keyAt(index) : self._keyAt(index) + _KEY] = key
                self._add(self._keyAt(index) + _KEY, worker, 1)
            self._add(0, worker, 1)
        return None

    def release(self, worker: int, host: str | None) -> None:
        """
        Count a connection from C{host} in C{worker} less.
        """
        with self._locked():
            self._add(0, worker, -1)
            if self.maxPerPeer:
                index, found = self._find(_keyOf(host or ""))
                if found:
                    assert index is not None
                    self._add(self._keyAt(index) + _KEY, worker, -1)
                    if not any(self._entryCounts(index)):
                        self._delete(index)

    def forget(self, worker: int) -> None:
        """
        Clear what C{worker} held: it has died, and its connections with it.
        """
        with self._locked():
            self._set(0, worker, 0)
            live = []
            for index in range(self.capacity):
                key = self._key(index)
                if key != _EMPTY:
                    self._set(self._keyAt(index) + _KEY, worker, 0)
                    counts = self._entryCounts(index)
                    if any(counts):
                        live.append((key, counts))
            # Rebuild: simpler than deleting many entries one by one.
            start = self._table
            self._memory[start : start + self.capacity * self._entry] = bytes(self.capacity * self._entry)
            for key, counts in live:
                index, _ = self._find(key)
                assert index is not None
                offset = self._keyAt(index)
                self._memory[offset : offset + _KEY] = key
                self._counts.pack_into(self._memory, offset + _KEY, *counts)

    def totals(self) -> tuple[int, ...]:
        """
        @return: the connections each worker holds now.
        """
        return self._counts.unpack_from(self._memory, 0)

    def peerCount(self, host: str) -> int:
        """
        @return: the connections C{host} holds now, in all workers.
        """
        index, found = self._find(_keyOf(host))
        return sum(self._entryCounts(index)) if found and index is not None else 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self.fileno, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fileno, fcntl.LOCK_UN)

    def _keyAt(self, index: int) -> int:
        return self._table + index * self._entry

    def _key(self, index: int) -> bytes:
        offset = self._keyAt(index)
        return self._memory[offset : offset + _KEY]

    def _entryCounts(self, index: int) -> tuple[int, ...]:
        return self._counts.unpack_from(self._memory, self._keyAt(index) + _KEY)

    def _home(self, key: bytes) -> int:
        return int.from_bytes(key[:8], "little") & (self.capacity - 1)

    def _find(self, key: bytes) -> tuple[int | None, bool]:
        # The entry holding key (True), or the empty entry where it would go
        # (False), or (None, False) if the table is full.
        index = self._home(key)
        for _ in range(self.capacity):
            found = self._key(index)
            if found == key:
                return index, True
            if found == _EMPTY:
                return index, False
            index = (index + 1) & (self.capacity - 1)
        return None, False

    def _delete(self, hole: int) -> None:
        # Algorithm R: move back every later entry of the run that may no
        # longer be found past the hole, then empty the last hole.
        mask = self.capacity - 1
        probe = hole
        while True:
            probe = (probe + 1) & mask
            key = self._key(probe)
            if key == _EMPTY:
                break
            home = self._home(key)
            if (hole < probe and hole < home <= probe) or (hole > probe and (home > hole or home <= probe)):
                continue  # Still reachable from its home.
            source, target = self._keyAt(probe), self._keyAt(hole)
            self._memory[target : target + self._entry] = self._memory[source : source + self._entry]
            hole = probe
        offset = self._keyAt(hole)
        self._memory[offset : offset + self._entry] = bytes(self._entry)

    def _add(self, offset: int, worker: int, delta: int) -> None:
        at = offset + 4 * worker
        (value,) = struct.unpack_from("=i", self._memory, at)
        struct.pack_into("=i", self._memory, at, max(0, value + delta))

    def _set(self, offset: int, worker: int, value: int) -> None:
        struct.pack_into("=i", self._memory, offset + 4 * worker, value)


class WorkerLimits:
    """
    One worker's view of a L{ConnectionTable}: the L{tcplab.server.SharedLimits}
    its L{tcplab.server.EchoServerFactory} asks.
    """

    def __init__(self, table: ConnectionTable, worker: int) -> None:
        self.table = table
        self.worker = worker

    def acquire(self, host: str | None) -> str | None:
        return self.table.acquire(self.worker, host)

    def release(self, host: str | None) -> None:
        self.table.release(self.worker, host)


def _keyOf(host: str) -> bytes:
    key = hashlib.blake2b(host.encode("utf-8", "surrogateescape"), digest_size=_KEY).digest()
    return key if key != _EMPTY else b"\x01" + key[1:]
