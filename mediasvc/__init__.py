"""mediasvc: ingest media files of any size over HTTP, keep them on disk, serve them with Range."""

__version__ = "0.1.0"
