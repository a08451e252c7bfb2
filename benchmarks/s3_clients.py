"""Compare async S3 clients for mediasvc's cloud tier: obstore vs aiobotocore.

Each contender uploads the same file (multipart, same part size and concurrency, the bytes
read in a worker thread and hashed on the way, as ``mediasvc.storage.cloud.s3`` does) and then
streams it back with one ranged GET in bounded chunks. Each transfer runs in a fresh child
process, so the child's peak RSS (``ru_maxrss``) is that client's memory; the RSS right after
the imports is printed too, so the transfer's own cost is the difference.

Throughput drifts on the shared VM, so rounds are interleaved (every contender once per
round, order alternating) and the report gives the median of the per-round ratios.

The server is s3rver (disk-backed, from tests/s3rver; `npm ci --prefix tests/s3rver`) unless
``--endpoint`` names another. aiobotocore is not a mediasvc dependency (it pins botocore
tightly, which fights moto's boto3), so run this from a separate venv:

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install obstore~=0.12.1 aiobotocore
    /tmp/bench-venv/bin/python benchmarks/s3_clients.py --size-mib 256 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
S3RVER_BIN = ROOT / "tests" / "s3rver" / "node_modules" / ".bin" / "s3rver"
BUCKET = "bench"
CREDENTIALS = {"access_key": "S3RVER", "secret_key": "S3RVER"}  # s3rver's fixed pair
PART_SIZE_BYTES = 8 * 1024 * 1024
CONCURRENCY = 4
READ_CHUNK_BYTES = 1024 * 1024
CLIENTS = ("obstore", "aiobotocore")
SETTLE_S = 0.2


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def _file_chunks(path: Path, hasher: Any) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while True:
            chunk = await asyncio.to_thread(_read_and_hash, f, hasher, READ_CHUNK_BYTES)
            if not chunk:
                return
            yield chunk


def _read_and_hash(f: Any, hasher: Any, size: int) -> bytes:
    data: bytes = f.read(size)
    hasher.update(data)
    return data


async def _obstore(op: str, endpoint: str, path: Path, key: str, size: int) -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        config={
            "endpoint": endpoint,
            "region": "us-east-1",
            "access_key_id": CREDENTIALS["access_key"],
            "secret_access_key": CREDENTIALS["secret_key"],
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True, "timeout": "600s"},
    )
    start = _mark()
    if op == "put":
        await obstore.put_async(
            store,
            key,
            _file_chunks(path, hashlib.sha256()),
            chunk_size=PART_SIZE_BYTES,
            max_concurrency=CONCURRENCY,
        )
    else:
        result = await obstore.get_async(store, key, options={"range": (0, size)})
        got = 0
        async for chunk in result.stream(min_chunk_size=READ_CHUNK_BYTES):
            got += len(chunk)
        assert got == size, got
    _report(op, start, size)


async def _aiobotocore(op: str, endpoint: str, path: Path, key: str, size: int) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=CONCURRENCY * 2,
        s3={"addressing_style": "path"},
    )
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["access_key"],
        aws_secret_access_key=CREDENTIALS["secret_key"],
        config=config,
    ) as client:
        start = _mark()
        if op == "put":
            await _aiobotocore_multipart(client, path, key)
        else:
            response = await client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=0-{size - 1}")
            got = 0
            async with response["Body"] as body:
                async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                    got += len(chunk)
            assert got == size, got
        _report(op, start, size)


async def _aiobotocore_multipart(client: Any, path: Path, key: str) -> None:
    # What a client without a transfer manager needs: our own parts, concurrency and abort.
    upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
    upload_id = upload["UploadId"]
    hasher = hashlib.sha256()
    parts: list[dict[str, Any]] = []
    slots = asyncio.Semaphore(CONCURRENCY)

    async def send(number: int, body: bytes) -> None:
        try:
            response = await client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            parts.append({"PartNumber": number, "ETag": response["ETag"]})
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group, asyncio.timeout(600):
            with path.open("rb") as f:
                number = 0
                while True:
                    await slots.acquire()  # bounds parts in memory, as obstore does
                    body = await asyncio.to_thread(_read_and_hash, f, hasher, PART_SIZE_BYTES)
                    if not body:
                        slots.release()
                        break
                    number += 1
                    group.create_task(send(number, body))
        parts.sort(key=lambda p: p["PartNumber"])
        await client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        await client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
        raise


async def _then_settle(transfer: Any) -> None:
    await transfer
    # obstore's tokio threads drop Python references just after the last await returns; an
    # interpreter that exits in that window aborts (SIGABRT), so give them a moment.
    await asyncio.sleep(SETTLE_S)


_T0: dict[str, float] = {}


def _mark() -> float:
    _T0["rss_before_mib"] = _rss_mib()
    return time.perf_counter()


def _report(op: str, start: float, size: int) -> None:
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "op": op,
                "seconds": seconds,
                "mb_per_s": size / seconds / 1e6,
                "rss_before_mib": _T0["rss_before_mib"],
                "peak_rss_mib": _rss_mib(),
            }
        )
    )


def _child(client: str, op: str, endpoint: str, path: Path, key: str, size: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", client, op, endpoint, str(path), key, str(size)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _start_s3rver(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = (data_dir / "s3rver.log").open("wb")
    argv = [str(S3RVER_BIN), "-d", str(data_dir / "store"), "-a", "127.0.0.1", "-p", "0", "-s"]
    proc = subprocess.Popen(
        [*argv, "--configure-bucket", BUCKET],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if match := re.search(r"listening on [\d.]+:(\d+)", line):
            return proc, f"http://127.0.0.1:{match.group(1)}"
    proc.kill()
    raise RuntimeError("s3rver did not start")


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * 1024 * 1024)
            f.write(os.urandom(n))
            left -= n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--endpoint", help="an S3 endpoint with bucket 'bench' (default: s3rver)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        client, op, endpoint, path, key, size = args.child
        run = _obstore if client == "obstore" else _aiobotocore
        asyncio.run(_then_settle(run(op, endpoint, Path(path), key, int(size))))
        return

    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        tmp_dir = Path(tmp)
        server = None
        endpoint = args.endpoint
        if endpoint is None:
            server, endpoint = _start_s3rver(tmp_dir)
        try:
            source = tmp_dir / "source.bin"
            _write_random(source, size)
            rows: list[dict[str, Any]] = []
            for round_no in range(args.rounds):
                order = CLIENTS if round_no % 2 == 0 else CLIENTS[::-1]
                for client in order:
                    key = f"{client}-{round_no}"
                    for op in ("put", "get"):
                        row = _child(client, op, endpoint, source, key, size)
                        row.update(client=client, round=round_no)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            _summarise(rows, args.rounds)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)


def _summarise(rows: list[dict[str, Any]], rounds: int) -> None:
    def pick(client: str, op: str, round_no: int) -> dict[str, Any]:
        return next(r for r in rows if (r["client"], r["op"], r["round"]) == (client, op, round_no))

    for op in ("put", "get"):
        ratios = [
            pick("obstore", op, n)["mb_per_s"] / pick("aiobotocore", op, n)["mb_per_s"]
            for n in range(rounds)
        ]
        print(f"{op}: obstore/aiobotocore throughput ratio median {statistics.median(ratios):.2f}")
        for client in CLIENTS:
            mine = [pick(client, op, n) for n in range(rounds)]
            print(
                f"  {client:12s} median {statistics.median(r['mb_per_s'] for r in mine):7.1f} MB/s"
                f"  peak RSS max {max(r['peak_rss_mib'] for r in mine):6.1f} MiB"
                f"  (after imports {statistics.median(r['rss_before_mib'] for r in mine):5.1f})"
            )


if __name__ == "__main__":
    main()
