"""Settings: environment variables with the ``MEDIASVC_`` prefix, or a ``.env`` file.

A ``MEDIASVC_*`` name that is not a setting stops the start (a misspelt limit must not leave the
default in force), with the nearest known name; ``describe_error`` makes any refusal one line.
"""

from __future__ import annotations

import difflib
import re
import socket
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mediasvc.auth import ApiKey
from mediasvc.events.endpoints import WebhookEndpoint
from mediasvc.media.config import threads_beside_the_api

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: The shortest signing secret accepted. Links are HMAC-SHA256: a key of the hash's own output
#: size (32 bytes) is what RFC 2104 recommends, and the 256 bits are out of reach of a guess.
#: An empty or short secret (a word, a default left in place) lets anyone forge a link.
MIN_SIGNING_SECRET_BYTES = 32
#: The async drivers installed with mediasvc (pyproject.toml), as SQLAlchemy names them.
DATABASE_DRIVERS = ("postgresql+asyncpg", "sqlite+aiosqlite")
DATABASE_URL_FORMS = (
    "use postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB or sqlite+aiosqlite:///PATH"
)


class Settings(BaseSettings):
    """Everything an operator can tune. Built once per app by ``create_app``, never at import."""

    model_config = SettingsConfigDict(env_prefix="MEDIASVC_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./data/mediasvc.db",
        description="SQLAlchemy async URL: postgresql+asyncpg://… in production; another "
        "driver than it or sqlite+aiosqlite is refused at start.",
    )
    media_root: Path = Field(default=Path("./data/media"), description="Where files live on disk.")
    max_upload_size_bytes: int = Field(
        default=16 * GiB, ge=0, description="Largest file accepted; 0 means unlimited."
    )
    io_chunk_size_bytes: int = Field(
        default=4 * MiB,
        ge=4 * KiB,
        multiple_of=4 * KiB,  # whole blocks: each batch goes to the disk with O_DIRECT as it is
        description=(
            "Batch size for hashing and disk writes on upload (3 such buffers per upload). "
            "2 GiB curl -T measured ~0.83, ~0.91 and ~1.0 GB/s with 1, 2 and 4 MiB."
        ),
    )
    download_chunk_size_bytes: int = Field(
        default=4 * MiB,
        ge=4 * KiB,
        description=(
            "Read size on download (memory per download is about two reads). 4 MiB measured "
            "~35 % faster than 1 MiB for full downloads, ~20 % for ranges."
        ),
    )
    fsync: bool = Field(
        default=True, description="fsync files and directories before answering 201."
    )
    direct_io: bool = Field(
        default=True,
        description=(
            "Write uploads with O_DIRECT, bypassing the page cache (about 3x faster durable "
            "writes measured here); falls back to buffered writes where the filesystem refuses."
        ),
    )
    public_base_url: str | None = Field(
        default=None, description="Absolute base for download_url, e.g. https://media.example.com."
    )
    min_free_disk_bytes: int = Field(
        default=64 * MiB, ge=0, description="Headroom kept free on the media disk (507 below it)."
    )
    max_ranges: int = Field(
        default=100,
        ge=1,
        description="More ranges than this in one request get the full file (200).",
    )
    list_default_limit: int = Field(default=50, ge=1, le=1000)

    # --- events and imports -----------------------------------------------------------------
    webhooks: list[WebhookEndpoint] = Field(
        default_factory=list,
        description='JSON list of {"url", "secret", "events"}: where events are POSTed, signed '
        "with secret (whsec_<base64>, Standard Webhooks); no events = every type.",
    )
    webhook_max_tries: int = Field(
        default=10, ge=1, description="Tries of one delivery before it is dead-lettered."
    )
    webhook_backoff_base_s: float = Field(
        default=5.0, gt=0, description="Delay after a delivery's first failed try; doubles."
    )
    webhook_backoff_max_s: float = Field(
        default=3600.0, gt=0, description="Longest delay between two tries of a delivery."
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="One delivery request, connect to last byte."
    )
    event_retention_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="Events delivered (or dead) longer ago than this are deleted by cleanup, "
        "with their attempts; 0: kept.",
    )
    import_allowed_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="JSON list of CIDRs an import may fetch from although they are private, "
        'loopback, link-local or reserved, e.g. ["10.1.0.0/16"]; empty: none.',
    )
    import_max_redirects: int = Field(
        default=5, ge=0, description="Redirects an import follows (each one checked again)."
    )
    import_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="An import's connect to the source."
    )
    import_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="An import's source that sends nothing this long is cut."
    )
    import_max_resumes: int = Field(
        default=5,
        ge=0,
        description="Times an import resumes a cut transfer with Range before it fails.",
    )

    # --- hostile input ----------------------------------------------------------------------
    body_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="An upload body that sends nothing this long is dropped."
    )
    max_header_bytes: int = Field(
        default=16 * KiB,
        ge=1 * KiB,
        description="A request's header block: request line and all headers (431 above).",
    )
    multipart_max_parts: int = Field(
        default=16, ge=1, description="Parts in one multipart upload (400 above)."
    )
    multipart_max_part_header_bytes: int = Field(
        default=8 * KiB, ge=256, description="Headers of one multipart part (400 above)."
    )

    # --- the request's header block (our uvicorn protocol) -------------------------------------
    header_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A request's header block must be complete within this (from the accept for a "
            "connection's first request, else from the request's first byte): 408 and close, "
            "or just close when nothing was sent. 30 s, as granian (hyper) defaults to: 16 KiB "
            "of headers take ~3 s at 50 kbit/s, and a slow client ties a connection up half "
            "as long as under nginx's 60 s."
        ),
    )

    # --- closing a connection whose request body was not read (our uvicorn protocol) ---------
    lingering_close_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "A response that went out before its request body was read whole (an early 4xx, "
            "a body sent to a route that reads none) ends its connection: the server shuts its "
            "side, discards what still arrives for at most this long, then closes (nginx's "
            "lingering close; its lingering_timeout is 5 s). Time for the client to read the "
            "response before a close turns into a reset."
        ),
    )

    # --- uploads in flight: admission, slow bodies, buffer memory (issue 11) -----------------
    max_uploads_in_flight: int = Field(
        default=128,
        ge=0,
        description="Uploads one process receives at once; more get 503 with Retry-After before "
        "their body is read. 0 = no cap.",
    )
    max_uploads_per_client: int = Field(
        default=0,
        ge=0,
        description="Uploads one client address may have under way at once; more get 429 with "
        "Retry-After. 0 = off (clients behind one NAT or proxy share an address).",
    )
    upload_retry_after_s: int = Field(
        default=5, ge=1, description="Retry-After of those 503 and 429 answers."
    )
    body_min_rate_bytes_per_s: int = Field(
        default=1024,
        ge=0,
        description="An upload body must average at least this rate over each window (the "
        "first window is its grace period), besides the idle timeout; slower: 408. 0 = off.",
    )
    body_min_rate_window_s: float = Field(
        default=30.0, gt=0, description="The window over which the body's rate is averaged."
    )
    upload_buffer_budget_bytes: int = Field(
        default=256 * MiB,
        ge=4 * KiB,
        description="Batch buffers of all uploads of one process together (taken when data "
        "arrives, given back when a body idles); an upload waits for one when all are in use.",
    )

    # --- delivery hardening (issue 11) -------------------------------------------------------
    download_send_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A download whose client takes nothing this long is disconnected "
        "(nginx send_timeout).",
    )
    download_send_part_bytes: int = Field(
        default=1 * MiB,
        ge=4 * KiB,
        description="Largest piece handed to the server at once: a stalled download holds at "
        "most one read (download_chunk_size_bytes) plus one such piece.",
    )
    accel_redirect_prefix: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9._~/-]*/$",
        description="Behind the nginx edge (deploy/nginx): downloads of local files without a "
        "download limit are answered with X-Accel-Redirect to this internal location, which "
        "maps onto media_root, and nginx sends the bytes. Set it only where every request "
        "comes through that edge and it sees this media volume.",
    )
    download_reservation_lease_s: float = Field(
        default=300.0,
        ge=10,
        description="How long an open budget reservation holds without being renewed (running "
        "downloads renew it every third of this); a crashed process's lapse after it.",
    )
    download_budget_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="A limited download refused only because other downloads of the file are "
        "still running waits this long for them to settle, then gets 503 with Retry-After.",
    )
    access_time_flush_s: float = Field(
        default=60.0,
        gt=0,
        description="Reads are recorded for LRU eviction in memory and written in one batch this "
        "often (best effort: a failed write never fails a download).",
    )
    malloc_trim_every_s: float = Field(
        default=30.0,
        ge=0,
        description="How often freed heap memory is handed back to the system (glibc "
        "malloc_trim); 0 = never.",
    )

    # --- access control (all off by default) ----------------------------------------------
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of {"name", "sha256", "admin"}; when set, upload and list need '
        "Authorization: Bearer <key> (`mediasvc hash-key KEY` prints the sha256).",
    )
    require_signed_downloads: bool = Field(
        default=False,
        description="Download, HEAD, metadata and preview need a link from "
        "GET /api/v1/files/{uid}/link or the owner's (or an admin) API key; needs api_keys.",
    )
    signing_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of signed links; the same on every node; at least "
        "32 bytes (HMAC-SHA256's key size), e.g. `openssl rand -hex 32`.",
    )
    max_link_expires_s: int = Field(default=7 * 86400, ge=1)

    cors_origins: list[str] = Field(
        default_factory=list,
        description='JSON list of origins (e.g. ["https://app.example"], or ["*"]) whose web '
        "pages may call the API from a browser: CORS headers, those of tus included.",
    )

    # --- resumable uploads (issue 14) -----------------------------------------------------
    upload_expires_after_s: int = Field(
        default=86400,
        ge=60,
        description="An unfinished resumable upload expires this long after its last byte "
        "(Upload-Expires); cleanup removes its bytes and row.",
    )
    upload_checkpoint_every_bytes: int = Field(
        default=64 * MiB,
        ge=4 * KiB,
        description="A long resumable PATCH makes its bytes durable and records the offset "
        "and hash state this often (a cut or crash keeps up to here).",
    )
    upload_takeover_wait_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a request for a resumable upload waits for the request it takes "
        "over, in another worker process, to let go (423 after that).",
    )
    upload_lease_check_s: float = Field(
        default=1.0,
        gt=0,
        description="How often a resumable upload's writer looks whether a request in another "
        "worker process took the upload over.",
    )
    internal_url: str | None = Field(
        default=None,
        description="This API node's own URL as the other nodes reach it (e.g. "
        "http://10.0.0.5:8000; {hostname} and {ip} are replaced by this machine's name and "
        "address), recorded in each resumable upload it creates: a request for that upload "
        "reaching another node is forwarded here, where its bytes are. Unset: one node "
        "(nothing is forwarded).",
    )
    internal_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of requests one API node forwards to another; the same on every "
        "node, at least 32 bytes (e.g. `openssl rand -hex 32`); needed with internal_url. The "
        "owner believes the client address a forwarded request carries (its per-client upload "
        "cap counts that client) and refuses (403) a request that claims to be forwarded "
        "without a valid signature.",
    )
    upload_forward_connect_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="How long a node tries to reach the node that holds an upload before "
        "answering 503 (with Retry-After).",
    )
    upload_owner_retry_after_s: int = Field(
        default=5,
        ge=1,
        description="Retry-After of the 503 when the node that holds an upload is unreachable.",
    )

    # --- jobs -----------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="arq's Redis, e.g. redis://127.0.0.1:6379/0; unset: jobs run in-process.",
    )
    push_max_tries: int = Field(default=8, ge=1, description="Attempts before a push is failed.")
    push_backoff_base_s: float = Field(default=2.0, gt=0, description="First retry delay.")
    push_backoff_max_s: float = Field(default=300.0, gt=0, description="Longest retry delay.")
    push_timeout_s: int = Field(
        default=3600,
        ge=1,
        description=(
            "Timeout of one push try (arq or in-process); a killed worker's push runs again "
            "after it."
        ),
    )
    reconcile_every_s: int = Field(
        default=60,
        ge=1,
        description="How often the reconciler runs (it also re-enqueues undelivered events).",
    )
    reconcile_stale_after_s: int = Field(
        default=600, ge=1, description="A pending/uploading push older than this is re-enqueued."
    )
    reconcile_failed_after_s: int = Field(
        default=3600, ge=1, description="A failed push is tried again after this long."
    )
    cleanup_every_s: int = Field(default=300, ge=1, description="How often the cleanup runs.")
    local_retention_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="Local copies older than this are evicted once safe in the cloud; 0 = never.",
    )
    disk_high_watermark: float = Field(
        default=0.90, gt=0, le=1, description="Disk usage that starts LRU eviction."
    )
    disk_low_watermark: float = Field(
        default=0.80, gt=0, le=1, description="LRU eviction stops below this usage."
    )
    part_grace_s: int = Field(
        default=86400, ge=60, description="A .part file untouched this long is swept."
    )

    # --- crash leftovers (issue 11) -------------------------------------------------------
    orphan_grace_s: int = Field(
        default=3600,
        ge=1,
        description=(
            "A file in the media root that no row claims (a process killed between the rename "
            "and the row's commit), or a temporary file of a push killed mid-copy in the local "
            "bucket, is swept once it is this old (by ctime); one still being committed or "
            "copied never is."
        ),
    )

    # --- media processing (issue 7) ----------------------------------------------------------
    ffprobe_path: str = Field(default="ffprobe", description="The ffprobe binary (Debian: ffmpeg).")
    ffmpeg_path: str = Field(default="ffmpeg", description="The ffmpeg binary (previews, remux).")
    probe_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="ffprobe, and ffmpeg making a preview, are killed after this.",
    )
    probe_max_pixels: int = Field(
        default=16384 * 16384,
        ge=1,
        description="Pictures with more pixels than this fail the probe (decompression bombs).",
    )
    media_tool_max_memory_bytes: int = Field(
        default=2 * GiB,
        ge=0,
        description="Address-space limit of each ffprobe/ffmpeg process (via prlimit); 0 = none.",
    )
    preview_max_size_px: int = Field(
        default=640, ge=16, le=4096, description="Previews fit in a square of this many pixels."
    )
    remux_faststart: bool = Field(
        default=False,
        description="Remux MP4/MOV files whose moov atom comes after mdat into a new file "
        "(ffmpeg -c copy -movflags +faststart), linked by derived_from.",
    )
    remux_timeout_s: int = Field(default=3600, ge=1, description="arq timeout of one remux.")

    # --- processing: renditions, storyboards, thumbnails, HLS (issue 16) ----------------------
    transcode: bool = Field(
        default=True,
        description="After the probe, make what a browser needs of each video or audio upload: "
        "a playable MP4/M4A when the original does not play as it is, a storyboard, HLS.",
    )
    transcode_concurrency: int = Field(
        default=1, ge=1, le=64, description="Transcode jobs at once per worker (or API process)."
    )
    transcode_threads: int = Field(
        default_factory=threads_beside_the_api,
        ge=1,
        le=64,
        description="Threads of each ffmpeg transcode (decode, encode); default: cores but one.",
    )
    transcode_nice: int = Field(
        default=10, ge=0, le=19, description="Niceness of ffmpeg transcodes (0: as the service)."
    )
    transcode_preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"
    ] = Field(default="veryfast", description="x264 preset of the renditions.")
    transcode_crf: int = Field(default=23, ge=0, le=51, description="x264 quality (lower: better).")
    transcode_timeout_base_s: float = Field(
        default=120.0, gt=0, description="Wall time of one ffmpeg run of a transcode: this much…"
    )
    transcode_timeout_per_media_s: float = Field(
        default=8.0,
        gt=0,
        description="…plus this many seconds per second of the file's duration; then killed.",
    )
    transcode_max_attempts: int = Field(
        default=2,
        ge=1,
        description="Starts of a file's transcode job: one cut by a worker crash runs again "
        "until this many have started, then it is failed.",
    )
    hls_ladder: str = Field(
        default="",
        pattern=r"^(\d{3,4}(,\d{3,4})*)?$",
        description="HLS rendition heights, e.g. 360,720,1080 (capped at the source's); empty: "
        "no HLS.",
    )
    storyboard_interval_s: float = Field(
        default=2.0, gt=0, description="A storyboard tile every so many seconds, at least…"
    )
    storyboard_max_tiles: int = Field(
        default=100, ge=1, le=400, description="…and at most this many tiles (one sprite sheet)."
    )
    storyboard_tile_width: int = Field(
        default=160, ge=32, le=640, description="Width of a storyboard tile in pixels."
    )
    thumbnail_max_width: int = Field(
        default=1920, ge=16, le=7680, description="The widest thumbnail the API renders."
    )
    thumbnail_cache_per_file: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Thumbnails kept on disk per file; beyond, the least recently used go.",
    )

    # --- cloud ----------------------------------------------------------------------------
    cloud_backend: Literal["local", "s3"] = Field(
        default="local", description="local: a directory acting as the bucket; s3: S3/MinIO."
    )
    cloud_root: Path = Field(
        default=Path("./data/bucket"), description="The 'bucket' directory of the local backend."
    )
    s3_endpoint_url: str | None = Field(default=None, description="None = AWS; MinIO: http://…")
    s3_region: str = "us-east-1"
    s3_bucket: str = "mediasvc"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_part_size_bytes: int = Field(
        default=8 * MiB, ge=5 * MiB, description="Multipart part size (grows for huge objects)."
    )
    s3_concurrency: int = Field(default=4, ge=1, description="Parts uploaded at once.")
    s3_timeout_s: float = Field(default=300.0, gt=0, description="Per-request timeout.")

    # --- server start-up --------------------------------------------------------------------
    graceful_shutdown_s: int = Field(
        default=30,
        ge=0,
        description="How long in-flight requests (uploads) may finish after SIGTERM "
        "(`mediasvc serve --graceful-shutdown-s` overrides it).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        check = _UnknownNames(settings_cls, env=env_settings, dotenv=dotenv_settings)
        return check, init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("public_base_url", "internal_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("internal_url")
    @classmethod
    def _fill_in_this_machine(cls, value: str | None) -> str | None:
        """``{hostname}``/``{ip}``: one setting for every container of a service (compose)."""
        if not value or "{" not in value:
            return value
        hostname = socket.gethostname()
        try:
            ip = socket.gethostbyname(hostname)
        except OSError as exc:
            raise ValueError(
                f"internal_url: this machine's name {hostname!r} has no address"
            ) from exc
        return value.replace("{hostname}", hostname).replace("{ip}", ip)

    @model_validator(mode="after")
    def _database_url_has_a_driver_we_ship(self) -> Settings:
        # Checked at start, not at the first query: an unknown scheme or a driver that is not
        # installed (postgresql:// means psycopg2) came out of SQLAlchemy as a long traceback.
        # Not a field validator: its error line would print the URL, password included.
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            raise ValueError(
                f"MEDIASVC_DATABASE_URL is not a database URL; {DATABASE_URL_FORMS}"
            ) from None
        if url.drivername not in DATABASE_DRIVERS:
            shown = url.render_as_string(hide_password=True)
            raise ValueError(
                f"MEDIASVC_DATABASE_URL={shown!r} uses the driver {url.drivername!r}, which "
                f"mediasvc does not ship; {DATABASE_URL_FORMS}"
            )
        return self

    @field_validator("internal_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes ${MEDIASVC_INTERNAL_SECRET:-}: empty when the operator set none.
        return None if value == "" else value

    @model_validator(mode="after")
    def _forwarding_needs_a_secret(self) -> Settings:
        if self.internal_url and self.internal_secret is None:
            raise ValueError(
                "MEDIASVC_INTERNAL_URL needs MEDIASVC_INTERNAL_SECRET (the same on every node): "
                "requests forwarded between nodes are signed with it"
            )
        _long_enough(
            "MEDIASVC_INTERNAL_SECRET",
            self.internal_secret,
            "signed forwarded requests need",
            "anyone who guesses it can pass for a node",
        )
        return self

    def internal_key(self) -> bytes | None:
        """The internal secret as the HMAC key (None: unset)."""
        if self.internal_secret is None:
            return None
        return self.internal_secret.get_secret_value().encode("utf-8")

    @model_validator(mode="after")
    def _signing_needs_a_secret(self) -> Settings:
        if self.require_signed_downloads and self.signing_secret is None:
            raise ValueError("require_signed_downloads needs MEDIASVC_SIGNING_SECRET")
        _long_enough(
            "MEDIASVC_SIGNING_SECRET",
            self.signing_secret,
            "signed links need",
            "anyone who guesses it can forge a link to any file",
        )
        if self.require_signed_downloads and not self.api_keys:
            # Without keys, anyone may call /link and mint a valid link for any UID: the
            # signatures would protect nothing.
            raise ValueError(
                "require_signed_downloads needs MEDIASVC_API_KEYS: without keys anyone can "
                "mint a signed link with GET /api/v1/files/{uid}/link"
            )
        if self.upload_buffer_budget_bytes < self.io_chunk_size_bytes:
            raise ValueError("upload_buffer_budget_bytes must hold one io_chunk_size_bytes buffer")
        if self.disk_low_watermark > self.disk_high_watermark:
            raise ValueError("disk_low_watermark must not exceed disk_high_watermark")
        return self


def _long_enough(name: str, secret: SecretStr | None, needs: str, risk: str) -> None:
    """An HMAC key of at least ``MIN_SIGNING_SECRET_BYTES``. Checked in a model validator, not a
    field validator: a field's error line shows its value, and a secret must never be printed."""
    if secret is None:
        return
    secret_bytes = len(secret.get_secret_value().encode("utf-8"))
    if secret_bytes < MIN_SIGNING_SECRET_BYTES:
        raise ValueError(
            f"{name} is {secret_bytes} bytes, {needs} at least {MIN_SIGNING_SECRET_BYTES}: "
            f'{risk}; set it to e.g. "$(openssl rand -hex 32)"'
        )


# --- unknown names and one-line errors -------------------------------------------------------

ENV_PREFIX = "MEDIASVC_"
#: Read by the command line, not by the service: the client's defaults, and the address list
#: ``serve --server granian`` hands to its worker processes.
CLI_NAMES = frozenset({"MEDIASVC_URL", "MEDIASVC_API_KEY", "MEDIASVC_SERVE_FORWARDED_ALLOW_IPS"})
#: Reserved for the test suite's own knobs (its Redis and PostgreSQL, screenshots).
TEST_PREFIX = "MEDIASVC_TEST_"


class UnknownSetting(ValueError):
    """A ``MEDIASVC_*`` name that no setting has; ``str(exc)`` names it and the nearest one."""


def known_names() -> list[str]:
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def unknown_names(names: list[str]) -> list[str]:
    """The ``MEDIASVC_*`` names (any case) among ``names`` that nothing reads."""
    known = {*known_names(), *CLI_NAMES}
    return [
        name
        for name in names
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and not name.upper().startswith(TEST_PREFIX)
    ]


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name.upper(), known_names(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class _UnknownNames(PydanticBaseSettingsSource):
    """A source that gives no values: it refuses unknown names in the environment and .env."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        *,
        env: PydanticBaseSettingsSource,
        dotenv: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._env = env
        self._dotenv = dotenv

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        # The sources hold what they read, names lower-cased, the prefix kept.
        for where, source in (("the environment", self._env), (".env", self._dotenv)):
            env_vars: Mapping[str, str | None] = getattr(source, "env_vars", {})
            unknown = unknown_names(list(env_vars))
            if unknown:
                name = unknown[0].upper()
                raise UnknownSetting(
                    f"unknown setting {name} in {where}{_suggestion(name)}; "
                    "the settings are listed in README.md, Configuration"
                )
        return {}


def describe_error(exc: Exception) -> str:
    """A refused configuration as one line: each bad setting, its value and what is wrong."""
    if isinstance(exc, ValidationError):
        problems = []
        for error in exc.errors():
            message = error.get("msg", "invalid").removeprefix("Value error, ")
            field = ".".join(str(part) for part in error.get("loc", ()))
            if not field:  # a rule between settings (the model validator)
                problems.append(message)
                continue
            value = error.get("input")
            shown = f"={value!r}" if isinstance(value, str | int | float) else ""
            problems.append(f"{ENV_PREFIX}{field.upper()}{shown}: {message}")
        return "invalid setting " + "; ".join(problems)
    if isinstance(exc, SettingsError):
        # pydantic-settings' own: a list or object setting whose value is not JSON.
        named = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{named.group(1).upper()}" if named else "a setting"
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        return f"invalid setting {name}: not valid JSON{cause}"
    return str(exc)


#: What ``Settings()`` raises for a configuration it refuses.
SETTINGS_ERRORS = (ValidationError, SettingsError, UnknownSetting)
