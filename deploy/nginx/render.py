"""Render the edge's templates to run nginx outside its image (as the tests and benchmarks do):

    python deploy/nginx/render.py PREFIX --upstream 127.0.0.1:8000 --listen 127.0.0.1:8080 \\
        --media-root /var/lib/mediasvc/media --accel-prefix /_mediasvc_files/
    nginx -p PREFIX -c PREFIX/nginx.conf

As the nginx image's envsubst, only the names given are replaced (nginx's own ``$variables``
stay). Standard library only: it runs before any environment is set up.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent


def render(
    prefix: Path, *, upstream: str, listen: str, media_root: Path, accel_prefix: str
) -> Path:
    """Write ``prefix``/default.conf (the server) and ``prefix``/nginx.conf (the main config
    that includes it); the latter's path."""
    prefix.mkdir(parents=True, exist_ok=True)
    server = Template((HERE / "templates" / "default.conf.template").read_text())
    (prefix / "default.conf").write_text(
        server.safe_substitute(
            MEDIASVC_UPSTREAM=upstream,
            MEDIASVC_EDGE_LISTEN=listen,
            MEDIASVC_MEDIA_ROOT=str(media_root),
            MEDIASVC_ACCEL_REDIRECT_PREFIX=accel_prefix,
        )
    )
    main = Template((HERE / "standalone.conf.template").read_text())
    user_line = "user root;" if os.geteuid() == 0 else ""  # else workers can't read the files
    conf = prefix / "nginx.conf"
    conf.write_text(main.safe_substitute(NGINX_PREFIX=str(prefix), NGINX_USER_LINE=user_line))
    return conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--upstream", required=True, help="the API, host:port")
    parser.add_argument("--listen", required=True, help="nginx's listen, e.g. 127.0.0.1:8080")
    parser.add_argument("--media-root", type=Path, required=True)
    parser.add_argument("--accel-prefix", default="/_mediasvc_files/")
    args = parser.parse_args()
    print(
        render(
            args.prefix.resolve(),
            upstream=args.upstream,
            listen=args.listen,
            media_root=args.media_root.resolve(),
            accel_prefix=args.accel_prefix,
        )
    )


if __name__ == "__main__":
    main()
