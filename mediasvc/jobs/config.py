"""What the jobs need to know: retries, schedules, retention and timeouts. Built from Settings
once, in ``JobContext.build`` (jobs/context.py); the media tools have their own MediaConfig."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from mediasvc.events.endpoints import WebhookEndpoint

if TYPE_CHECKING:
    from mediasvc.config import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsConfig:
    redis_url: str | None = None  # None: the jobs run in the API process
    # push
    push_max_tries: int = 8
    push_backoff_base_s: float = 2.0
    push_backoff_max_s: float = 300.0
    push_timeout_s: int = 3600
    # probe and remux (their timeouts as jobs are derived from these, jobs/table.py)
    probe_timeout_s: float = 30.0
    remux_timeout_s: int = 3600
    remux_faststart: bool = False
    # transcode (renditions, storyboard, HLS)
    transcode: bool = True
    transcode_concurrency: int = 1
    transcode_max_attempts: int = 2
    cloud_request_timeout_s: float = 300.0  # one request to the cloud store (a preview's put)
    io_chunk_size_bytes: int = 4 * 1024 * 1024  # reading a remuxed copy to hash it
    # reconcile
    reconcile_every_s: int = 60
    reconcile_stale_after_s: int = 600
    reconcile_failed_after_s: int = 3600
    # cleanup and the volume audit
    cleanup_every_s: int = 300
    local_retention_s: int = 7 * 86400  # 0: never evict for age
    disk_high_watermark: float = 0.90
    disk_low_watermark: float = 0.80
    part_grace_s: int = 86400
    orphan_grace_s: int = 3600
    # webhooks (events/deliver.py)
    webhooks: list[WebhookEndpoint] = field(default_factory=list)
    webhook_max_tries: int = 10
    webhook_backoff_base_s: float = 5.0
    webhook_backoff_max_s: float = 3600.0
    webhook_timeout_s: float = 10.0
    event_retention_s: int = 7 * 86400  # settled events are deleted after this; 0: kept
    public_base_url: str | None = None  # absolute URLs in event bodies
    # URL imports (imports/)
    import_allowed_networks: list[IPv4Network | IPv6Network] = field(default_factory=list)
    import_max_redirects: int = 5
    import_connect_timeout_s: float = 10.0
    import_idle_timeout_s: float = 60.0
    import_max_resumes: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> JobsConfig:
        """Each field from the setting of the same name, or of the name in ``SETTING_NAMES``."""
        names = {field.name: SETTING_NAMES.get(field.name, field.name) for field in fields(cls)}
        return cls(**{field: getattr(settings, name) for field, name in names.items()})


# Fields whose setting has another name.
SETTING_NAMES = {"cloud_request_timeout_s": "s3_timeout_s"}
