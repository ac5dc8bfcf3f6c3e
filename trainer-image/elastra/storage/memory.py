"""The memory tier's pod side: the store in the pod's memory, and the snapshot server that serves it.

`MemoryStore` is the file tier without `fsync`, rooted at the pod's memory volume (Kubernetes
`emptyDir: {medium: Memory}`, i.e. tmpfs; localcluster maps emptyDir to a per-pod folder). Files in
it outlive the worker processes (a worker killed with SIGKILL and restarted in place reads them back
with no storage I/O) and go with the pod: a node loss takes them.

The snapshot server (`python -m elastra.storage.memory --dir D --host POD_IP --port P`) is the
process the pod agent owns to guard them: it serves the store to peers over HTTP on the pod IP, so a
new generation reads what it needs from the survivors' memory. Read only: `GET /v1/steps` (the step
directories and whether each is committed), `GET|HEAD /v1/k/<key>` with an optional `Range: bytes=a-b`
(sent with `sendfile`). `PeerClient` is its client.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import logging
import mmap
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from elastra.storage.base import NotFoundError, StorageError, check_key
from elastra.storage.local import LocalStorage

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
PEER_TIMEOUT_S = 10.0
"""Connect and read timeout of one peer request."""


class MemoryStore(LocalStorage):
    """The file tier in the pod's memory: atomic renames, no `fsync` (tmpfs has nothing to flush)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.direct_io = False  # memory is the page cache: there is no second copy to spare
        self.durable = False  # tmpfs has nothing to flush

    def put_stream(self, key: str, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write `key` from `pieces` as they are produced (one write each: no concatenation, so a
        producer can reuse its buffers), atomically as any write: renamed into place once complete."""

        def write(fd: int, _tmp: str) -> None:
            for piece in pieces:
                view = memoryview(piece).cast("B")
                while view.nbytes:
                    view = view[os.write(fd, view) :]

        self._atomic_write(key, write)

    def adopt(self, key: str, path: str) -> None:
        """Make the complete file `path` (on this store's file system) `key`, by a rename."""
        target = self._path(key)
        self._make_dirs(target.parent)
        try:
            os.replace(path, target)
        except OSError as exc:
            raise StorageError(f"moving {path} to {target}: {exc}") from exc

    def map_range(self, key: str, start: int, n: int) -> memoryview | None:
        """Bytes `[start, start + n)` of `key` as a read-only view of the file's own pages (tmpfs: no
        copy), or None when the file is shorter (the caller then reads instead). Safe to hold: store
        files are replaced by renames, never truncated or rewritten in place, so the mapped inode
        keeps its bytes (and no access past its end can fault) while the view lives."""
        if start < 0 or n <= 0:
            return None
        fd = self._open_for_reading(key)
        try:
            if os.fstat(fd).st_size < start + n:
                return None
            base = start - start % mmap.ALLOCATIONGRANULARITY
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # page tables filled in one call
            mapping = mmap.mmap(fd, start + n - base, flags=flags, prot=mmap.PROT_READ, offset=base)
        except OSError as exc:
            raise StorageError(f"mapping {self._path(key)}: {exc}") from exc
        finally:
            os.close(fd)
        return memoryview(mapping)[start - base : start - base + n]  # the view keeps the mapping

    def steps(self) -> dict[int, bool]:
        """`{step: committed}` of every `step-N` directory (committed: its manifest is here)."""
        out: dict[int, bool] = {}
        for name in self.list_dirs():
            if name.startswith("step-") and name[5:].isdigit():
                out[int(name[5:])] = self.exists(f"{name}/{MANIFEST}")
        return out

    def bytes_held(self) -> int:
        """Bytes of every file of the store's snapshots (its `step-N` directories: not the staging
        file the snapshotter keeps mapped for the next save)."""
        root = Path(self.uri)
        steps = (d for d in root.glob("step-*") if d.is_dir()) if root.is_dir() else ()
        return sum(p.stat().st_size for d in steps for p in d.rglob("*") if p.is_file())

    def prune(self, keep: int = 1) -> list[int]:
        """Keep the newest `keep` committed steps and anything newer (a snapshot being written);
        delete the rest, manifest first. The steps deleted."""
        steps = self.steps()
        committed = sorted((s for s, ok in steps.items() if ok), reverse=True)
        if not committed:
            return []
        kept = set(committed[:keep])
        doomed = [s for s in steps if s not in kept and s < committed[0]]
        for step in doomed:
            self.delete(f"step-{step}/{MANIFEST}")
            self.delete_prefix(f"step-{step}")
        return sorted(doomed)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SnapshotServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, code: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:  # noqa: PLR0911 - one early reply per refusal
        store = self.server.store
        if self.path == "/v1/steps":
            body = json.dumps({str(k): v for k, v in store.steps().items()}).encode()
            self._reply(200, body, "application/json")
            return
        if not self.path.startswith("/v1/k/"):
            self._reply(404, b"unknown path")
            return
        try:
            key = check_key(unquote(self.path[len("/v1/k/") :]))
        except ValueError as exc:
            self._reply(400, str(exc).encode())
            return
        try:
            fd = os.open(store.path_of(key), os.O_RDONLY)
        except FileNotFoundError:
            self._reply(404, b"not found")
            return
        except OSError as exc:
            self._reply(500, str(exc).encode())
            return
        try:
            size = os.fstat(fd).st_size
            start, end, code = 0, size, 200
            wanted = self.headers.get("Range")
            if wanted:
                match = _RANGE.match(wanted.strip())
                if not match or int(match[1]) > int(match[2]) or int(match[2]) >= size:
                    self._reply(416, f"bad range {wanted!r} for {size} bytes".encode())
                    return
                start, end, code = int(match[1]), int(match[2]) + 1, 206
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("X-Object-Size", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            offset = start
            while offset < end:
                sent = os.sendfile(self.connection.fileno(), fd, offset, end - offset)
                if sent == 0:
                    break
                offset += sent
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            os.close(fd)


class SnapshotServer(http.server.ThreadingHTTPServer):
    """Serves one `MemoryStore` to peers (read only)."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, store: MemoryStore, host: str, port: int) -> None:
        self.store = store
        super().__init__((host, port), _Handler)

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"


class PeerClient:
    """Reads another pod's memory store through its snapshot server (`host:port`)."""

    def __init__(self, address: str, timeout_s: float = PEER_TIMEOUT_S) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"peer address must be host:port, got {address!r}")
        self.address = address
        self._host, self._port, self._timeout = host, int(port), timeout_s

    def _request(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            return conn.getresponse()
        except OSError as exc:
            conn.close()
            raise StorageError(f"peer {self.address}: {exc}") from exc

    def steps(self) -> dict[int, bool]:
        """The peer's `{step: committed}`; StorageError when it cannot be asked or answers nonsense."""
        resp = self._request("/v1/steps")
        try:
            body = resp.read(1 << 20)
        finally:
            resp.close()
        if resp.status != 200:
            raise StorageError(f"peer {self.address}: /v1/steps answered {resp.status}")
        try:
            raw = json.loads(body)
            return {int(k): bool(v) for k, v in raw.items() if int(k) >= 0}
        except (ValueError, AttributeError, TypeError) as exc:
            raise StorageError(f"peer {self.address}: bad /v1/steps answer: {exc}") from exc

    def get(self, key: str, max_bytes: int = 64 << 20) -> bytes:
        """A whole (small) object: NotFoundError, or StorageError."""
        resp = self._request("/v1/k/" + quote(check_key(key)))
        try:
            if resp.status == 404:
                raise NotFoundError(f"peer {self.address} has no {key}")
            if resp.status != 200:
                raise StorageError(f"peer {self.address}: {key} answered {resp.status}")
            length = int(resp.getheader("Content-Length") or -1)
            if not 0 <= length <= max_bytes:
                raise StorageError(f"peer {self.address}: {key} is {length} bytes, more than {max_bytes}")
            body = resp.read(length)
            if len(body) != length:
                raise StorageError(f"peer {self.address}: short read of {key}")
            return body
        finally:
            resp.close()

    def read_into(self, key: str, start: int, out: memoryview) -> None:
        """Fill `out` with bytes `[start, start + len(out))` of `key`, straight from the socket."""
        if out.nbytes == 0:
            return
        end = start + out.nbytes - 1
        resp = self._request("/v1/k/" + quote(check_key(key)), {"Range": f"bytes={start}-{end}"})
        try:
            if resp.status == 404:
                raise NotFoundError(f"peer {self.address} has no {key}")
            if resp.status != 206 or int(resp.getheader("Content-Length") or -1) != out.nbytes:
                raise StorageError(f"peer {self.address}: range of {key} answered {resp.status}")
            view = out.cast("B") if out.format != "B" else out
            got = 0
            while got < view.nbytes:
                n = resp.readinto(view[got:])
                if not n:
                    raise StorageError(f"peer {self.address}: short read of {key} at {start + got}")
                got += n
        except OSError as exc:
            raise StorageError(f"peer {self.address}: reading {key}: {exc}") from exc
        finally:
            resp.close()


def main(argv: list[str] | None = None) -> int:
    """Run the snapshot server of one pod until SIGTERM; the store is removed on exit (`--owned`)."""
    parser = argparse.ArgumentParser(prog="python -m elastra.storage.memory")
    parser.add_argument("--dir", required=True, help="the pod's memory volume")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--owned", action="store_true", help="delete the store's contents on exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s elastra-memory %(levelname)s %(message)s")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    server = SnapshotServer(MemoryStore(args.dir), args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("snapshot server on %s serving %s", server.address, args.dir)
    print(f"ready {server.address}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.owned:
            for child in Path(args.dir).iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
