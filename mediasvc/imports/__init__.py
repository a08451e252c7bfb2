"""Import from a URL: ``POST /api/v1/files/import`` (api/imports.py) answers 202 at once; the
``import_url`` job (``job``) fetches the source (``fetch``) through the address guard
(``guard``) and streams it into the same ingest engine as an upload."""
