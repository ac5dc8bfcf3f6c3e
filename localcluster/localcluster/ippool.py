"""Pod IP addresses for the process kubelets: one loopback address per pod."""

from __future__ import annotations

import ipaddress
import random


def random_pod_subnet() -> ipaddress.IPv4Network:
    """A /16 inside 127/8 other than 127.0/16 (where the API server and node addresses live).

    Every localcluster draws its own, as a real cluster has its own pod CIDR, so two clusters on one
    machine (tests run side by side) never hand the same pod IP to two pods that bind the same port."""
    return ipaddress.IPv4Network(f"127.{random.randint(1, 254)}.0.0/16")  # noqa: S311 (not a secret)


class IpPool:
    """Pod IPs from `subnet` (all of 127/8 routes to lo on Linux), handed out round-robin so a freed
    address is not reused soon. The network and broadcast-like `.0`/`.255` addresses are skipped."""

    def __init__(self, subnet: ipaddress.IPv4Network | None = None) -> None:
        self.subnet = subnet if subnet is not None else random_pod_subnet()
        self._first = int(self.subnet.network_address) + 2
        self._last = int(self.subnet.broadcast_address) - 1
        self._next = self._first
        self._used: set[str] = set()

    def allocate(self) -> str:
        """A free address."""
        for _ in range(self._last - self._first + 1):
            candidate = ipaddress.IPv4Address(self._next)
            self._next = self._next + 1 if self._next < self._last else self._first
            text = str(candidate)
            if text.endswith((".0", ".255")) or text in self._used:
                continue
            self._used.add(text)
            return text
        raise RuntimeError(f"pod subnet {self.subnet} is exhausted")

    def release(self, address: str) -> None:
        """Give an address back."""
        self._used.discard(address)
