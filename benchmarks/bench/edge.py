"""The nginx edge of deploy/nginx for the benchmarks: a second mediasvc node that offloads
downloads (X-Accel-Redirect) on the same database and files, and two edges: one in front of
it, one in front of the plain node (no offload)."""

from __future__ import annotations

import importlib.util
import os
import sys

from bench.base import BENCH, BenchError
from bench.children import free_port, wait_http
from bench.context import Run
from bench.servers import ensure_nginx

ACCEL_PREFIX = "/_mediasvc_files/"
DEPLOY = BENCH.parent / "deploy" / "nginx"


def _render(**kwargs: object) -> object:
    """deploy/nginx/render.py's ``render`` (no package of ours: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("nginx_render", DEPLOY / "render.py")
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {DEPLOY / 'render.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render(**kwargs)


def start_edges(r: Run) -> None:
    """``mediasvc_offload``, ``edge`` (in front of it) and ``edge_plain`` (in front of
    ``mediasvc``), once per run."""
    if "edge" in r.servers:
        return
    single = r.tmp / "single"
    port = free_port()
    argv = [sys.executable, "-m", "mediasvc", "serve", "--port", str(port)]
    env = {**r.env_single, "MEDIASVC_ACCEL_REDIRECT_PREFIX": ACCEL_PREFIX}
    node = r.children.start("mediasvc_offload", [*argv, "--log-level", "warning"], env=env,
                            cwd=single, port=port)  # fmt: skip
    r.servers["mediasvc_offload"] = node
    wait_http(node, "/healthz")
    nginx = ensure_nginx()
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    for name, upstream in (("edge", node), ("edge_plain", r.servers["mediasvc"])):
        prefix = r.tmp / name
        port = free_port()
        conf = _render(
            prefix=prefix,
            upstream=f"127.0.0.1:{upstream.port}",
            listen=f"127.0.0.1:{port}",
            media_root=single / "media",
            accel_prefix=ACCEL_PREFIX,
        )
        r.servers[name] = r.children.start(
            name, [nginx, "-p", str(prefix), "-c", str(conf)], env=plain_env, cwd=prefix, port=port
        )
        wait_http(r.servers[name], "/healthz")
