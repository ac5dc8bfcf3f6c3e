"""Pod IP addresses for the process kubelets: one loopback address per pod."""

from __future__ import annotations

import ipaddress


class IpPool:
    """Pod IPs 127.0.0.2 upwards (all of 127/8 routes to lo on Linux), handed out round-robin so a
    freed address is not reused soon."""

    def __init__(self) -> None:
        self._next = int(ipaddress.IPv4Address("127.0.0.2"))
        self._used: set[str] = set()

    def allocate(self) -> str:
        """A free address."""
        while True:
            candidate = ipaddress.IPv4Address(self._next)
            self._next = (
                self._next + 1
                if self._next < int(ipaddress.IPv4Address("127.255.255.254"))
                else int(ipaddress.IPv4Address("127.0.0.2"))
            )
            text = str(candidate)
            if text.endswith((".0", ".255")) or text == "127.0.0.1" or text in self._used:
                continue
            self._used.add(text)
            return text

    def release(self, address: str) -> None:
        """Give an address back."""
        self._used.discard(address)
