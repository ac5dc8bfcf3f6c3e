"""localcluster API throughput: object writes per second while 100 watches follow every change.

The cluster runs as its own process (`python -m localcluster.server`, no nodes), as `elastra local up`
runs it; this process is the client. All watches start from one list resourceVersion before the
writes, so each must see every write exactly once, in resourceVersion order: any lost, duplicated or
reordered event is counted and reported. Writes are creates then merge patches of ConfigMaps, from 32
concurrent requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import platform
import re
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "localcluster.json"
DOC = ROOT / "docs" / "benchmarks.md"
WATCHES = 100
OBJECTS = 2500  # each created, then patched once: 5000 writes
CONCURRENCY = 32
TARGET_WRITES_PER_S = 500
_RV = re.compile(rb'"resourceVersion":"(\d+)"')


async def _watch(
    session: aiohttp.ClientSession, url: str, rv: str, expected: int, out: dict[str, Any]
) -> None:
    last = int(rv)
    seen = lost_order = 0
    async with session.get(
        f"{url}/api/v1/namespaces/bench/configmaps",
        params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "600"},
    ) as resp:
        async for line in resp.content:
            found = _RV.search(line)  # the server's own encoding; a full parse would time the client
            if found is None:
                raise AssertionError(f"watch line without a resourceVersion: {line[:200]!r}")
            current = int(found.group(1))
            if current <= last:
                lost_order += 1
            last = current
            seen += 1
            if seen >= expected:
                break
    out["seen"] = seen
    out["out_of_order"] = lost_order
    out["done_at"] = time.perf_counter()


async def _writes(session: aiohttp.ClientSession, url: str) -> list[float]:
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for i in range(OBJECTS):
        queue.put_nowait(("create", f"cm-{i}"))
    latencies: list[float] = []
    created: asyncio.Queue[str] = asyncio.Queue()

    async def worker() -> None:
        while True:
            try:
                kind, name = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    name = created.get_nowait()
                    kind = "patch"
                except asyncio.QueueEmpty:
                    return
            start = time.perf_counter()
            if kind == "create":
                body = {"metadata": {"name": name, "labels": {"bench": "1"}}, "data": {"value": "0"}}
                async with session.post(f"{url}/api/v1/namespaces/bench/configmaps", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                created.put_nowait(name)
            else:
                headers = {"Content-Type": "application/merge-patch+json"}
                async with session.patch(
                    f"{url}/api/v1/namespaces/bench/configmaps/{name}",
                    data=json.dumps({"data": {"value": "1"}}),
                    headers=headers,
                ) as resp:
                    assert resp.status == 200, await resp.text()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


async def _run(url: str, kubeconfig: str) -> dict[str, Any]:
    # HTTPS with the cluster CA and the admin token, as the kubeconfig says (the API is TLS only).
    # Not through localcluster.tls: this file shadows the `localcluster` package when run_all loads it.
    config = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
    token = config["users"][0]["user"]["token"]
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    context = ssl.create_default_context(cadata=ca)
    connector = aiohttp.TCPConnector(limit=WATCHES + CONCURRENCY + 8, ssl=context)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=900),
        headers={"Authorization": f"Bearer {token}"},
    ) as session:
        async with session.post(f"{url}/api/v1/namespaces", json={"metadata": {"name": "bench"}}) as resp:
            assert resp.status == 201
        async with session.get(f"{url}/api/v1/namespaces/bench/configmaps") as resp:
            rv = (await resp.json())["metadata"]["resourceVersion"]
        writes = 2 * OBJECTS
        states: list[dict[str, Any]] = [{} for _ in range(WATCHES)]
        watches = [asyncio.create_task(_watch(session, url, rv, writes, s)) for s in states]
        await asyncio.sleep(1.0)  # let every watch connect before the clock starts
        start = time.perf_counter()
        latencies = await _writes(session, url)
        write_s = time.perf_counter() - start
        await asyncio.wait_for(asyncio.gather(*watches), 600)
        delivered_s = max(s["done_at"] for s in states) - start
    latencies.sort()
    return {
        "writes": writes,
        "watches": WATCHES,
        "concurrency": CONCURRENCY,
        "write_seconds": round(write_s, 3),
        "writes_per_second": round(writes / write_s, 1),
        "write_latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "write_latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "all_events_delivered_seconds": round(delivered_s, 3),
        "events_delivered": sum(s["seen"] for s in states),
        "events_expected": writes * WATCHES,
        "events_lost": sum(writes - s["seen"] for s in states),
        "events_out_of_order": sum(s["out_of_order"] for s in states),
    }


def _start_server(directory: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    argv = [sys.executable, "-m", "localcluster.server", "--dir", directory, "--nodes", "0"]
    log = open(pathlib.Path(directory) / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    state = pathlib.Path(directory) / "state.json"
    deadline = time.monotonic() + 60
    while not state.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                "localcluster server did not start: "
                + (pathlib.Path(directory) / "server.log").read_text()[-2000:]
            )
        time.sleep(0.1)
    info: dict[str, Any] = json.loads(state.read_text())
    return server, info


def _write_doc(result: dict[str, Any]) -> None:
    met = (
        result["writes_per_second"] >= TARGET_WRITES_PER_S
        and result["events_lost"] == 0
        and result["events_out_of_order"] == 0
    )
    section = "\n".join([
        "<!-- BEGIN localcluster -->",
        f"Measured {result['date']} on {result['machine']} ({result['cpus']} CPUs), "
        "server and client in separate processes.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| object writes (creates, then merge patches) | {result['writes']} "
        f"from {result['concurrency']} concurrent requests |",
        f"| **writes/s** (target ≥ {TARGET_WRITES_PER_S}) | **{result['writes_per_second']}** |",
        f"| write latency p50 / p99 | {result['write_latency_p50_ms']} ms "
        f"/ {result['write_latency_p99_ms']} ms |",
        f"| concurrent watches, each following every write | {result['watches']} |",
        f"| events delivered / expected | {result['events_delivered']} / {result['events_expected']} |",
        f"| lost / out-of-order events | {result['events_lost']} / {result['events_out_of_order']} |",
        f"| last watch caught up after (from the first write) | {result['all_events_delivered_seconds']} s |",
        "",
        f"Target {'met' if met else 'NOT met'}: ≥ {TARGET_WRITES_PER_S} writes/s with "
        f"{result['watches']} watches and no lost or reordered events.",
        "<!-- END localcluster -->",
    ])  # fmt: skip
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(r"<!-- BEGIN localcluster -->.*?<!-- END localcluster -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        intro = (
            "\n## localcluster\n\n`benchmarks/localcluster.py`: API writes/s while 100 watches "
            "follow every change "
            "(the server runs as its own process, as `elastra local up` runs it).\n\n"
        )
        text = text.rstrip("\n") + "\n" + intro + section + "\n"
    DOC.write_text(text)


def main() -> int:
    """Run the benchmark; write results/localcluster.json and the doc section; 1 if the target is missed."""
    with tempfile.TemporaryDirectory() as directory:
        server, state = _start_server(directory)
        try:
            print(
                f"localcluster benchmark: {2 * OBJECTS} writes, {WATCHES} watches against {state['url']}",
                flush=True,
            )
            result = asyncio.run(_run(state["url"], state["kubeconfig"]))
        finally:
            server.terminate()
            server.wait(30)
    result.update(
        date=time.strftime("%Y-%m-%d"),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        python=platform.python_version(),
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _write_doc(result)
    print(json.dumps(result, indent=2))
    ok = (
        result["writes_per_second"] >= TARGET_WRITES_PER_S
        and result["events_lost"] == 0
        and result["events_out_of_order"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
