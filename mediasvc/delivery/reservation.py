"""A download's claim on its file's budget: reserved up front, settled with what was sent.

``bytes_served`` counts open reservations (so concurrent downloads can't overshoot), and
``bytes_reserved`` says how much of it is still open. A refusal is then one of two things:
- the bytes would not fit even if every open reservation were given back: 410, and the file is
  retired once its full downloads are all used;
- they would fit but for other downloads still running: we wait a little for those to settle
  (a player's second request usually arrives as the first ends), then answer 503 with
  Retry-After. The file is never retired because of reservations that may yet be refunded.
Open reservations carry a lease that running downloads renew; a crashed process's lapse.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from mediasvc.db import repository
from mediasvc.db.file_row import FileRow
from mediasvc.db.models import GoneReason
from mediasvc.db.session import Database
from mediasvc.delivery.budget import is_exhausted
from mediasvc.errors import DatabaseUnavailable, DownloadsInProgress, Gone

logger = logging.getLogger(__name__)

POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5


class Reservation:
    """``reserved_bytes`` held for one response; ``settle`` gives back what it did not send."""

    def __init__(self, db: Database, uid: str, reserved_bytes: int, *, lease_s: float) -> None:
        self._db = db
        self._uid = uid
        self.reserved_bytes = reserved_bytes
        self._lease_s = lease_s
        self._renew_at = time.monotonic() + lease_s / 3
        self._settled = False

    async def keep_renewed(self) -> None:
        """Renew the lease a third of the way into it, again and again, until cancelled: beside
        a send, however long one message of it takes (a slow reader's range)."""
        while True:
            await anyio.sleep(max(0.0, self._renew_at - time.monotonic()))
            await self.keep_alive()

    async def keep_alive(self) -> None:
        """Renew the lease a third of the way into it; best effort (a failed write is logged)."""
        if time.monotonic() < self._renew_at:
            return
        self._renew_at = time.monotonic() + self._lease_s / 3
        until = datetime.now(UTC) + timedelta(seconds=self._lease_s)
        try:
            async with self._db.session() as session:
                await repository.renew_reservations(session, self._uid, until)
        except DatabaseUnavailable:
            logger.warning("could not renew the download reservations of %s", self._uid)

    async def settle(self, sent_bytes: int) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            # One UPDATE where it can be (Database.settle_reservation): on a keep-alive
            # connection, the next request's reservation waits for this one's row.
            await self._db.settle_reservation(self._uid, self.reserved_bytes, sent_bytes)
        except DatabaseUnavailable:
            # The lease lapses and the next reservation drops it (in the client's favour).
            logger.warning("could not settle a download reservation of %s", self._uid)


async def reserve(
    db: Database,
    record: FileRow,
    n: int,
    budget: int,
    *,
    lease_s: float,
    wait_s: float,
) -> tuple[Reservation, int]:
    """Reserve ``n`` bytes of ``record``'s budget; (reservation, bytes_served after it).

    Raises Gone (410) when they can never fit, DownloadsInProgress (503) when other downloads
    still hold what would make them fit after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    pause_s = POLL_FIRST_S
    while True:
        now = datetime.now(UTC)
        # One UPDATE, without the ORM where it can be (Database.reserve_bytes): the first byte
        # waits on it.
        total = await db.reserve_bytes(
            record.uid, n, budget, now=now, lease_until=now + timedelta(seconds=lease_s)
        )
        if total is not None:
            return Reservation(db, record.uid, n, lease_s=lease_s), total
        # Refused: why, and the file retired if it is used up, the usual way (no hurry).
        async with db.session() as session:
            state = await repository.budget_state(session, record.uid, now)
            if state is None:
                raise Gone("the file is gone")
            used, open_bytes = state
            if used + n > budget:
                await _retire_if_exhausted(session, record, used)
                raise Gone("the file's download limit is used up")
        if open_bytes == 0:
            continue  # the others settled between the two statements: it fits now
        if time.monotonic() + pause_s > deadline:
            raise DownloadsInProgress(
                "other downloads of this file hold its remaining budget; "
                "what they do not take is given back",
                retry_after_s=max(1, round(wait_s)),
            )
        await anyio.sleep(pause_s)
        pause_s = min(pause_s * 2, POLL_MAX_S)


async def _retire_if_exhausted(session: AsyncSession, record: FileRow, used: int) -> None:
    """Make the row a tombstone when finished downloads used every full download.

    ``used`` leaves out open reservations, which can only add to it: this holds whatever they do.
    """
    if is_exhausted(record, used):
        await repository.mark_gone(session, record.uid, GoneReason.EXHAUSTED, datetime.now(UTC))
