"""import_url: fetch an import's source into the ingest engine, as an upload of those bytes.

The job (id ``import:<uid>``) reads the import's row, opens the source (imports/fetch.py, through
the guard) and hands its chunks to ``Ingestor.ingest`` with the uid and delete token given out
at 202: the same limits, disk checks, sha256 check and commit (with ``file.created``) as an
upload, then the same follow-ups (push + probe). Any failure leaves no bytes (the ingestor
discards its part file) and marks the import ``failed`` with the reason. A run of a killed
worker starts again from the first byte (its part file is swept by cleanup).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpcore

from mediasvc.db import imports, repository
from mediasvc.db.models import ImportStatus
from mediasvc.errors import MediaServiceError, ServiceUnavailable
from mediasvc.imports.fetch import ImportFailed, Source
from mediasvc.imports.guard import AddressGuard, system_resolver
from mediasvc.ingest.names import validate_name
from mediasvc.ingest.pipeline import Ingestor, UploadFacts, UploadOptions
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import JobResult, after_new_file

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 1000
RETRY_UNAVAILABLE_S = 10.0
# How imports resolve names and connect: the tests put their own here (a resolver that knows
# only loopback, a backend that fails the test before connecting anywhere else).
resolver = system_resolver
network_backend: type[httpcore.AsyncNetworkBackend] = httpcore.AnyIOBackend


async def import_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """Run the import ``uid``; its file's follow-ups once the bytes are in."""
    async with ctx.db.session() as session:
        job = await imports.get(session, uid)
        committed = await repository.exists(session, uid)
    if job is None or job.status != ImportStatus.IMPORTING.value:
        return JobResult("skipped")
    if committed:  # a run killed between its file's commit and this row's
        await _finish(ctx, uid, ImportStatus.DONE, None)
        return JobResult(ImportStatus.DONE.value, follow_ups=after_new_file(uid))
    config = ctx.config
    guard = AddressGuard(config.import_allowed_networks, resolver)
    options = job.options
    try:
        async with Source(job.url, guard, network_backend(), config) as source:
            info = await source.open()
            name = options.get("filename") or _usable(info.name)
            facts = UploadFacts(
                name=name,
                declared_type=info.content_type,
                declared_length=info.length,
                expected_sha256=(options["expected_sha256"],)
                if options.get("expected_sha256")
                else (),
                uid=uid,
                delete_token_hash=job.delete_token_hash,
            )
            upload = UploadOptions(
                max_downloads=options.get("max_downloads"),
                expires_in_s=options.get("expires_in"),
                owner=job.owner,
                metadata=options.get("metadata"),
            )
            await Ingestor(ctx.ingest, ctx.store, ctx.db).ingest(source.chunks(), facts, upload)
    except ServiceUnavailable as exc:  # the database or the disk's admission: not the source's
        logger.info("import %s waits: %s", uid, exc.detail)
        return JobResult(ImportStatus.IMPORTING.value, retry_in_s=RETRY_UNAVAILABLE_S)
    except (ImportFailed, MediaServiceError) as exc:
        reason = (exc.detail if isinstance(exc, MediaServiceError) else str(exc))[:MAX_ERROR_CHARS]
        logger.info("import %s failed: %s", uid, reason)
        await _finish(ctx, uid, ImportStatus.FAILED, reason)
        return JobResult(ImportStatus.FAILED.value)
    await _finish(ctx, uid, ImportStatus.DONE, None)
    return JobResult(ImportStatus.DONE.value, follow_ups=after_new_file(uid))


def _usable(name: str | None) -> str | None:
    """The URL's last segment as the file's name, if it is a valid one."""
    if not name:
        return None
    try:
        validate_name(name)
    except MediaServiceError:
        return None
    return name


async def _finish(ctx: JobContext, uid: str, status: ImportStatus, error: str | None) -> None:
    async with ctx.db.session() as session:
        await imports.finish(session, uid, status, error=error, now=datetime.now(UTC))
