"""`elastra operator --priority oldest-first`: Kopf freezes every replica that sees a live peer of equal
priority, so each replica of the chart's Deployment must get its own, and an older one must outrank a
younger one (a replacement pod stands by instead of taking over)."""

from __future__ import annotations

import pytest

from elastra_operator.cli import OLDEST_FIRST, build_parser, oldest_first_priority


@pytest.mark.parametrize(
    ("older", "younger"),
    [
        pytest.param((1_764_000_000_000, "op-a"), (1_764_000_000_001, "op-a"), id="one-ms-later-ranks-lower"),
        pytest.param(
            (1_764_000_000_000, "op-zzz"), (1_764_000_000_001, "op-a"), id="pod-id-never-outweighs-age"
        ),
        pytest.param(
            (1_764_000_000_000, "op-b"), (1_764_000_060_000, "op-b"), id="a-minute-later-ranks-lower"
        ),
    ],
)
def test_an_older_replica_outranks_a_younger_one(older: tuple[int, str], younger: tuple[int, str]) -> None:
    assert oldest_first_priority(*older) > oldest_first_priority(*younger)


def test_replicas_started_in_the_same_millisecond_get_distinct_priorities() -> None:
    started = 1_764_000_000_000
    priorities = {oldest_first_priority(started, f"elastra-7d9f-{i}") for i in range(2)}
    assert len(priorities) == 2


def test_priorities_stay_exact_in_json_numbers() -> None:
    # The peering object stores them as JSON numbers: keep within 2**53 for the year 2200.
    assert abs(oldest_first_priority(7_258_118_400_000, "x")) < 2**53


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([], 0, id="default-is-kopfs-zero"),
        pytest.param(["--priority", "100"], 100, id="integer"),
        pytest.param(["--priority", "oldest-first"], OLDEST_FIRST, id="oldest-first"),
    ],
)
def test_priority_flag(argv: list[str], expected: int | str) -> None:
    assert build_parser().parse_args(argv).priority == expected


def test_priority_flag_refuses_other_words(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--priority", "newest"])
    assert "expected an integer or 'oldest-first'" in capsys.readouterr().err


def test_peering_lifetime_and_metrics_host_flags() -> None:
    args = build_parser().parse_args(["--peering-lifetime", "6", "--metrics-host", "127.0.3.4"])
    assert (args.peering_lifetime, args.metrics_host) == (6, "127.0.3.4")
    defaults = build_parser().parse_args([])
    assert (defaults.peering_lifetime, defaults.metrics_host) == (60, "0.0.0.0")
