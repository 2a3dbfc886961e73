"""Load test of the prediction API on loopback: requests/s, p50/p99 latency and errors.

    python benchmarks/load_test.py --model runs/fast [--onnx model.onnx] --seconds 60 --concurrency 16

Starts ``digit-recognizer serve`` in a subprocess on 127.0.0.1 (a free port), then keeps ``--concurrency``
requests in flight for ``--seconds`` seconds, each ``POST /api/predict`` with one image as JSON pixels (drawn
from the embedded digits). The loop is bounded in time and stops by itself. Writes ``--json`` if given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from digit_recognizer.data import load_embedded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def hammer(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=bodies[i % len(bodies)],
                                                 headers={"content-type": "application/json"})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--onnx", type=Path)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    port = free_port()
    flag = ["--onnx", str(args.onnx)] if args.onnx else ["--model", str(args.model)]
    server = subprocess.Popen([sys.executable, "-m", "digit_recognizer.cli", "serve", *flag, "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        _, test = load_embedded()
        bodies = [json.dumps({"pixels": row.tolist()}).encode() for row in test.images[:256]]
        asyncio.run(hammer(f"{base}/api/predict", bodies, 2, args.concurrency))  # warm-up
        started = time.perf_counter()
        latencies, errors = asyncio.run(hammer(f"{base}/api/predict", bodies, args.seconds, args.concurrency))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)

    ms = np.array(latencies) * 1000
    result = {
        "backend": "onnxruntime" if args.onnx else "pytorch",
        "seconds": round(elapsed, 1), "concurrency": args.concurrency, "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": errors,
    }
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
