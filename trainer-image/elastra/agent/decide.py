"""What the agent does about a membership record: pure decisions, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from elastra.api.membership import Member, Membership, MembershipPhase
from elastra.api.pod import PodContract
from elastra.control import ControlMessage

WORKER_ENV_OWNED = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "ELASTRA_GENERATION",
    "ELASTRA_RESTORE_STEP",
    "ELASTRA_RESTORE_URI",
    "ELASTRA_CONTROL_DIR",
)
"""Variables the agent sets per worker; inherited values of these are dropped."""


class Kind(enum.StrEnum):
    KEEP = "keep"
    """Nothing to change."""
    START = "start"
    """Stop the current workers (if any) and start this generation's."""
    STOP = "stop"
    """Stop the workers and wait."""
    EXIT = "exit"
    """Stop what still runs and exit with `exit_code`."""


@dataclass(frozen=True, slots=True)
class Local:
    """What the agent knows about its own workers."""

    generation: int | None
    """Generation of the workers started last; None when none was started."""
    running: bool
    """Some worker process is alive."""
    outcome: int | None
    """Once all workers of that generation ended: 0 when all exited 0, else the first non-zero code."""


@dataclass(frozen=True, slots=True)
class Action:
    """One decision."""

    kind: Kind
    generation: int | None = None
    """Generation to start (START)."""
    member: Member | None = None
    """This pod's entry in it (START)."""
    exit_code: int | None = None
    """Exit code of the agent (EXIT)."""
    why: str = ""
    """For the log."""


def decide(membership: Membership | None, pod: str, local: Local) -> Action:
    """The agent's next move for `membership` as seen by `pod`. Pure."""
    if membership is None:
        return Action(Kind.KEEP, why="no membership record yet")
    if membership.phase is MembershipPhase.DONE:
        code = local.outcome if local.outcome is not None else 0
        return Action(Kind.EXIT, exit_code=code, why=f"job done (generation {membership.generation})")
    member = membership.member(pod)
    if membership.phase is MembershipPhase.HOLD or member is None:
        why = "hold" if member is not None else "not a member"
        return Action(
            Kind.STOP if local.running else Kind.KEEP, why=f"{why} in generation {membership.generation}"
        )
    if local.generation is None or membership.generation > local.generation:
        last = member.rank_start + member.nprocs - 1
        return Action(
            Kind.START,
            generation=membership.generation,
            member=member,
            why=f"generation {membership.generation}: ranks {member.rank_start}..{last}",
        )
    return Action(Kind.KEEP, why=f"generation {local.generation} is current")


def worker_env(
    base: Mapping[str, str], membership: Membership, member: Member, local_rank: int, control_dir: str
) -> dict[str, str]:
    """The environment of local worker `local_rank` of `member` in `membership`. Pure."""
    env = {k: v for k, v in base.items() if k not in WORKER_ENV_OWNED}
    env.update(
        RANK=str(member.rank_start + local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(membership.world_size),
        LOCAL_WORLD_SIZE=str(member.nprocs),
        MASTER_ADDR=membership.master_addr or member.pod_ip,
        MASTER_PORT=str(membership.master_port),
        ELASTRA_GENERATION=str(membership.generation),
        ELASTRA_CONTROL_DIR=control_dir,
    )
    if membership.restore is not None:
        env["ELASTRA_RESTORE_STEP"] = str(membership.restore.step)
        env["ELASTRA_RESTORE_URI"] = membership.restore.uri
    contract = PodContract.from_env(base)
    if contract.memory_dir:  # the memory tier: every member's snapshot server
        port = contract.memory_port
        env["ELASTRA_MEMORY_PEERS"] = ",".join(f"{m.pod}={m.pod_ip}:{port}" for m in membership.members)
        env["ELASTRA_MEMORY_ADDR"] = f"{member.pod_ip}:{port}"
    return env


def control_message(membership: Membership | None, generation: int, *, stop: bool) -> ControlMessage:
    """What the workers of `generation` are told, given the newest record. Pure."""
    request = membership.checkpoint_request if membership is not None else None
    return ControlMessage(
        generation=generation,
        request_id=request.id if request else None,
        request_time=request.requested_at.timestamp() if request else 0.0,
        stop=stop,
    )
