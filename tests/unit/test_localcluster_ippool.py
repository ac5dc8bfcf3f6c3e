"""Pod IP pool: each cluster draws its own /16 inside 127/8, addresses are unique and skip .0/.255."""

from __future__ import annotations

import ipaddress

import pytest

from localcluster.ippool import IpPool, random_pod_subnet


@pytest.mark.parametrize(
    ("subnet", "count", "first", "last"),
    [
        pytest.param("127.5.0.0/16", 1, "127.5.0.2", "127.5.0.2", id="first-address"),
        pytest.param("127.5.0.0/16", 254, "127.5.0.2", "127.5.1.1", id="skips-dot-255-and-dot-0"),
        pytest.param("127.9.0.0/30", 1, "127.9.0.2", "127.9.0.2", id="tiny-subnet"),
    ],
)
def test_allocate(subnet: str, count: int, first: str, last: str) -> None:
    pool = IpPool(ipaddress.IPv4Network(subnet))
    got = [pool.allocate() for _ in range(count)]
    assert got[0] == first and got[-1] == last
    assert len(set(got)) == count
    assert not any(a.endswith((".0", ".255")) for a in got)


def test_exhausted_pool_says_so_and_release_frees() -> None:
    pool = IpPool(ipaddress.IPv4Network("127.9.0.0/30"))
    only = pool.allocate()
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.allocate()
    pool.release(only)
    assert pool.allocate() == only


def test_random_subnet_stays_off_the_node_addresses() -> None:
    for _ in range(200):
        subnet = random_pod_subnet()
        assert subnet.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        assert ipaddress.IPv4Address("127.0.0.1") not in subnet
