"""Credentials reach the ranks through memory only: no file, no command line, on any host.

A rank gets its config with the secret values redacted (what a launcher may write to
disk, as TorchDistributor pickles a function's arguments into a folder of each
executor, or put on a command line, as horovodrun's Gloo launcher does with the whole
environment). It then asks the driver for the values, once, over a socket:

- ranks on this machine (local mode, horovodrun): a Unix socket in Linux's abstract
  namespace (no file, so no leftover and no path-length limit under a deep TMPDIR),
  answering only processes of this user (SO_PEERCRED); its name, which is no secret,
  travels in the environment or the launch info;
- ranks on other hosts: TCP on the address the ranks reach the driver at, answering
  whoever sends the job's random token first. The token may land where the redacted
  config does, but it opens nothing once the job has ended, and during the job only
  to someone who can already read the executor's files (and so its processes' memory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Where a rank started by a launcher that copies the environment (horovodrun) finds them.
SECRETS_AT_ENV = "HOROVOD_LLM_SECRETS_AT"
_TIMEOUT_S = 30.0


class _Server:
    def __init__(self, values: dict, bind_host: str | None):
        self.payload = json.dumps(values).encode()
        self.stopped = threading.Event()
        if bind_host is None:
            name = f"horovod-llm-secrets-{secrets.token_hex(8)}"
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.socket.bind("\0" + name)
            self.token = None
            self.address = f"unix:@{name}"
        else:
            self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.socket.bind((bind_host, 0))
            self.token = secrets.token_hex(16)
            self.address = f"tcp:{bind_host}:{self.socket.getsockname()[1]}:{self.token}"
        self.socket.listen(64)
        self.socket.settimeout(0.5)
        self.thread = threading.Thread(target=self._serve, name="secrets", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except (TimeoutError, OSError):
                continue
            with connection:
                connection.settimeout(5)
                try:
                    if self._admitted(connection):
                        connection.sendall(self.payload)
                except OSError:
                    continue

    def _admitted(self, connection: socket.socket) -> bool:
        if self.token is None:
            credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", credentials)
            return uid == os.getuid()
        sent = connection.recv(len(self.token) + 1)
        return secrets.compare_digest(sent, (self.token + "\n").encode())

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.socket.close()


@contextlib.contextmanager
def serving_secrets(values: dict, bind_host: str | None) -> Iterator[str | None]:
    """Serve `values` (redaction.secret_values) to this job's ranks while the block runs;
    yield the address they fetch them at, None when there is nothing to hide. bind_host
    None: ranks on this machine only (a Unix socket); else TCP on that address."""
    if not values:
        yield None
        return
    server = _Server(values, bind_host)
    try:
        yield server.address
    finally:
        server.stop()


def fetch_secrets(address: str | None) -> dict:
    """The values the driver serves at `address` ({} without one)."""
    if not address:
        return {}
    kind, _, rest = address.partition(":")
    if kind == "unix":
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target, token = "\0" + rest.removeprefix("@"), None
    else:
        host, port, token = rest.rsplit(":", 2)
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    with connection:
        connection.settimeout(_TIMEOUT_S)
        connection.connect(target)
        if token:
            connection.sendall((token + "\n").encode())
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
    if not received:
        raise RuntimeError(f"the driver at {address.split(':')[0]}:... refused this rank its credentials")
    return json.loads(received)
