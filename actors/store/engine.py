"""The SQLite engine: the connections' owner threads and group commit.

``aiosqlite`` cannot run under trio, so the engine owns two stdlib ``sqlite3``
connections (one for writes, one for reads; WAL lets them work side by side), each
used from worker threads one call at a time through its own ``CapacityLimiter(1)``.

Writes are functions of a connection, sent to one writer task. While a commit is in
flight, the writes that arrive queue up and go into the next single transaction
(group commit), so ``synchronous=FULL`` durability costs one fsync per batch, not
per write. Each write is undone alone if it fails: its caller gets the exception;
the others commit. After each commit the jobs the writes changed are published, in
commit order, through ``on_commit``.

Poll notes (``Store.note_poll``) are the one kind of write that is not durable at
once: they are kept in memory, the last one per job, and written every
``POLL_FLUSH_SECONDS`` and on close.

The engine knows no table: what a write does is the repositories' business
(``jobs``, ``idempotency``, ``outbox``, ``durations``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from actors.jobs import Job
from actors.store.migrations import connect, migrate
from actors.store.protocol import POLL_FLUSH_SECONDS, StoreStatistics

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The largest number of writes that share one transaction.
MAX_BATCH = 512

#: A poll note: ``(next_poll_at, poll_count, progress, noted at)``.
PollNote = tuple[float, int, float | None, float]


@attrs.define(eq=False)
class Write:
    """One write on its way through the writer. ``fn`` runs on the writer thread and
    appends to ``changed`` the jobs whose state it changed."""

    fn: Callable[[sqlite3.Connection, Write], Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    changed: list[Job] = attrs.field(factory=list)


class Engine:
    """Make one with ``open_engine``."""

    def __init__(
        self,
        path: Path,
        on_commit: Callable[[Iterable[Job]], None],
        write_polls: Callable[[sqlite3.Connection, Mapping[str, PollNote]], None],
    ) -> None:
        self._on_commit = on_commit
        self._write_polls = write_polls
        self._write_conn = connect(path)
        self._read_conn = connect(path)
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[Write](10_000)
        self._stats = StoreStatistics()
        self._polls: dict[str, PollNote] = {}
        self._polls_waiting = trio.Event()

    def statistics(self) -> StoreStatistics:
        return attrs.evolve(self._stats)

    async def write(self, fn: Callable[[sqlite3.Connection, Write], T]) -> T:
        """Run ``fn`` in the next transaction; its result once that has committed."""
        write = Write(fn)
        # A cancelled caller's write is not sent, as before; but there is no
        # scheduling point of its own when the channel has room (nearly always):
        # the wait below is the one this write needs.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._send.send_nowait(write)
        except trio.WouldBlock:
            await self._send.send(write)
        await write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[no-any-return]

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the read connection."""
        return await trio.to_thread.run_sync(fn, self._read_conn, *args,
                                             limiter=self._read_limiter)

    def note_poll(self, job_id: str, note: PollNote) -> None:
        self._polls[job_id] = note
        self._polls_waiting.set()

    # -- the writer ---------------------------------------------------------

    async def _run_writer(self) -> None:
        async with self._receive:
            async for first in self._receive:
                # Let the tasks that are ready now send theirs too, so they share
                # this transaction rather than wait for the next one.
                await trio.lowlevel.checkpoint()
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await trio.to_thread.run_sync(self._commit, batch, limiter=self._write_limiter)
                self._stats.writes += len(batch)
                self._stats.transactions += 1
                self._stats.largest_batch = max(self._stats.largest_batch, len(batch))
                for write in batch:
                    self._on_commit(write.changed)
                    write.done.set()

    def _commit(self, batch: list[Write]) -> None:
        """Run ``batch`` in one transaction.

        Optimistically without savepoints (two statements per write saved on the
        hot path); if any write raises, the transaction is rolled back and the batch
        run again with a savepoint per write, so only the failing ones are undone.
        """
        conn = self._write_conn
        try:
            if not self._run_batch(conn, batch, isolated=False):
                self._run_batch(conn, batch, isolated=True)
        except Exception as exc:
            log.exception("store transaction failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for write in batch:
                write.error = write.error or exc
                write.changed.clear()

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[Write], *, isolated: bool) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        for write in batch:
            write.result, write.error = None, None
            write.changed.clear()
            if isolated:
                conn.execute("SAVEPOINT w")
            try:
                write.result = write.fn(conn, write)
            except Exception as exc:  # handed to that write's caller
                if not isolated:
                    conn.execute("ROLLBACK")
                    return False
                write.error = exc
                write.changed.clear()
                conn.execute("ROLLBACK TO w")
            if isolated:
                conn.execute("RELEASE w")
        conn.execute("COMMIT")
        return True

    # -- poll notes ---------------------------------------------------------

    async def _flush_polls(self, *, final: bool = False) -> None:
        """Write the poll notes gathered so far; ``final``: directly, as the writer
        task may already be gone (the daemon is stopping)."""
        polls, self._polls = self._polls, {}
        if not polls:
            return

        def op(conn: sqlite3.Connection, write: Write) -> None:
            self._write_polls(conn, polls)

        if not final:
            await self.write(op)
            return
        await trio.to_thread.run_sync(self._commit, [Write(op)], limiter=self._write_limiter)

    async def _run_poll_flusher(self) -> None:
        # No timer while there is nothing to write: an idle store sleeps for good
        # (and a MockClock test is not moved along by it).
        while True:
            await self._polls_waiting.wait()
            await trio.sleep(POLL_FLUSH_SECONDS)
            self._polls_waiting = trio.Event()
            await self._flush_polls()


@asynccontextmanager
async def open_engine(
    path: Path,
    on_commit: Callable[[Iterable[Job]], None],
    write_polls: Callable[[sqlite3.Connection, Mapping[str, PollNote]], None],
) -> AsyncIterator[Engine]:
    """Open (and migrate) the database at ``path`` for the duration of the block.

    On exit, writes already sent are committed and the poll notes written before
    the connections close, so a draining daemon loses nothing it acknowledged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = await trio.to_thread.run_sync(Engine, path, on_commit, write_polls)
    try:
        await trio.to_thread.run_sync(migrate, engine._write_conn, limiter=engine._write_limiter)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._run_writer)
            flusher = trio.CancelScope()

            async def flush_polls() -> None:
                with flusher:
                    await engine._run_poll_flusher()

            nursery.start_soon(flush_polls)
            try:
                yield engine
            finally:
                # Let the writer drain what was sent, then stop.
                flusher.cancel()
                await engine._send.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await engine._flush_polls(final=True)
            await trio.to_thread.run_sync(engine._write_conn.close,
                                          limiter=engine._write_limiter)
            await trio.to_thread.run_sync(engine._read_conn.close, limiter=engine._read_limiter)
