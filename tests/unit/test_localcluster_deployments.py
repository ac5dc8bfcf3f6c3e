"""localcluster's Deployment controller plan: pods from the template, replaced, scaled, status. Pure."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localcluster import deployments

TEMPLATE = {
    "metadata": {"labels": {"app": "op"}, "annotations": {"a": "b"}},
    "spec": {"containers": [{"name": "op", "image": "x", "command": ["sleep", "60"]}]},
}
HASH = deployments.template_hash(TEMPLATE)


def _deployment(replicas: int = 2, template: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "op", "namespace": "ns", "uid": "d-uid", "generation": 3},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "op"}},
            "template": template or TEMPLATE,
        },
    }


def _pod(
    name: str,
    *,
    ready: bool = True,
    pod_hash: str = HASH,
    owner: str = "d-uid",
    created: str = "2026-01-01T00:00:00Z",
    phase: str = "Running",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "creationTimestamp": created,
        "labels": {"app": "op", "pod-template-hash": pod_hash},
        "ownerReferences": [{"uid": owner, "controller": True, "kind": "Deployment", "name": "op"}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "status": {"phase": phase, "conditions": conditions}}


@pytest.mark.parametrize(
    ("replicas", "pods", "creates", "deletes", "ready"),
    [
        pytest.param(2, [], 2, [], 0, id="creates-from-nothing"),
        pytest.param(2, [_pod("a"), _pod("b")], 0, [], 2, id="steady"),
        pytest.param(2, [_pod("a")], 1, [], 1, id="replaces-a-missing-pod"),
        pytest.param(2, [_pod("a"), _pod("b", phase="Failed")], 1, [], 1, id="replaces-a-finished-pod"),
        pytest.param(2, [_pod("a"), _pod("b", deleting=True)], 1, [], 1, id="terminating-does-not-count"),
        pytest.param(
            1,
            [_pod("new", ready=False, created="2026-01-02T00:00:00Z"), _pod("old")],
            0,
            ["new"],
            1,
            id="scale-down-drops-not-ready-first",
        ),
        pytest.param(1, [_pod("a"), _pod("b", pod_hash="old")], 0, ["b"], 1, id="old-template-pods-go"),
        pytest.param(1, [_pod("a"), _pod("x", owner="other")], 0, [], 1, id="ignores-other-owners"),
        pytest.param(0, [_pod("a")], 0, ["a"], 0, id="scale-to-zero"),
    ],
)
def test_plan(
    replicas: int, pods: list[dict[str, Any]], creates: int, deletes: list[str], ready: int
) -> None:
    step = deployments.plan(_deployment(replicas), pods)
    assert len(step.create) == creates
    assert list(step.delete) == deletes
    assert step.status.get("readyReplicas", 0) == ready
    assert step.status["replicas"] == replicas and step.status["observedGeneration"] == 3
    available = next(c for c in step.status["conditions"] if c["type"] == "Available")
    assert available["status"] == ("True" if ready >= replicas else "False")


def test_new_pods_carry_template_labels_hash_and_owner() -> None:
    (pod,) = deployments.plan(_deployment(1), []).create
    meta = pod["metadata"]
    assert meta["generateName"] == f"op-{HASH}-" and meta["namespace"] == "ns"
    assert meta["labels"] == {"app": "op", "pod-template-hash": HASH}
    assert meta["annotations"] == {"a": "b"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "op",
            "uid": "d-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"] == TEMPLATE["spec"]


def test_template_change_replaces_every_pod() -> None:
    changed = copy.deepcopy(TEMPLATE)
    changed["spec"]["containers"][0]["command"] = ["sleep", "61"]
    step = deployments.plan(_deployment(2, changed), [_pod("a"), _pod("b")])
    assert sorted(step.delete) == ["a", "b"] and len(step.create) == 2
    assert deployments.template_hash(changed) != HASH


def test_status_is_stable_when_nothing_changes() -> None:
    deployment = _deployment(1)
    first = deployments.plan(deployment, [_pod("a")]).status
    again = deployments.plan({**deployment, "status": first}, [_pod("a")]).status
    assert again == first  # no status write, no resourceVersion churn
