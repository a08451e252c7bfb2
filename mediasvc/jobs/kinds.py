"""The kinds of job, and what a job hands back to its runner: a status and its follow-ups.

Follow-up rules, each made by the job that knows it (the runner enqueues them):
- a new file (an upload, a faststart copy) → push + probe (``after_new_file``);
- a probe of an MP4/MOV without faststart, with ``remux_faststart`` on → remux;
- a probe of an original video or audio file with something to make → transcode;
- a transcode → push + probe of each file it made;
- a push → nothing; it may ask to be run again later (``retry_in_s``);
- an event's delivery → nothing; it runs again while a delivery of it is owed;
- a URL import → what a new file gets (push + probe) once its bytes are in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    """A job kind; the value is also the arq function's name."""

    PUSH = "push_to_cloud"
    PROBE = "probe_media"
    REMUX = "remux_faststart"
    TRANSCODE = "transcode_media"
    DELIVER = "deliver_event"  # its argument is an event's msg id, not a file's uid
    IMPORT = "import_url"


#: A queue's ``enqueue(kind, uid)``: True if the job was queued, False if it was refused (the same
#: job is already queued or running, or the queue is down). Never raises.
Enqueue = Callable[[Kind, str], Awaitable[bool]]


class FollowUp(NamedTuple):
    kind: Kind
    uid: str


@dataclass(frozen=True, slots=True)
class JobResult:
    status: str
    #: Enqueued in order once the job returns; see jobs/runner.py.
    follow_ups: tuple[FollowUp, ...] = ()
    #: Run this job again after so many seconds (arq: ``Retry``; in-process: a sleep).
    retry_in_s: float | None = None


def after_new_file(uid: str) -> tuple[FollowUp, ...]:
    """A file just committed is pushed to the cloud and probed (the push first: see runner)."""
    return (FollowUp(Kind.PUSH, uid), FollowUp(Kind.PROBE, uid))
