"""A worker under an agent whose rendezvous is broken by a peer exits as a peer failure (75).

At a generation change the new pod's worker may reach the rendezvous port while the previous
generation's rank 0 still holds it, and that store goes away under it. The error is raised inside
`elastra.init()`; it must not count as a crash in user code (exit 1), which the operator takes for a
permanent failure and fails the whole job.
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading

import pytest

from elastra.session import EXIT_PEER_LOST


def _resetting_server(listener: socket.socket, stop: threading.Event) -> None:
    """Accept every connection and reset it at once (SO_LINGER 0), as a store that died would."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_reset_rendezvous_exits_as_peer_lost(tmp_path: pathlib.Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        stop = threading.Event()
        server = threading.Thread(target=_resetting_server, args=(listener, stop), daemon=True)
        server.start()
        env = {
            **os.environ,
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(listener.getsockname()[1]),
            "ELASTRA_CONTROL_DIR": str(tmp_path),
            "ELASTRA_GENERATION": "3",
            "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS": "5",
        }
        try:
            done = subprocess.run(
                [sys.executable, "-c", "import elastra; elastra.init()"],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=45,
            )
        finally:
            stop.set()
            server.join()
    assert done.returncode == EXIT_PEER_LOST, done.stderr[-3000:]
    assert "status-1.json" in os.listdir(tmp_path), "the failure is reported to the agent"
