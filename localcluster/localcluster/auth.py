"""Authentication: who sends a request. Bearer tokens only, as a kubeadm cluster's API server has them.

- The admin kubeconfig's token is `kubernetes-admin` in group `system:masters` (cluster-admin: RBAC is
  not consulted for it, as on a real cluster).
- ServiceAccount tokens are issued per pod by the kubelet (the projected `kube-api-access-*` volume)
  or by the TokenRequest API (`POST .../serviceaccounts/NAME/token`). Like real bound tokens they stop
  working when the ServiceAccount or the pod they are bound to is gone (or recreated with a new uid),
  and when they expire.
- A request without a token is `system:anonymous`; one with an unknown token gets 401.

Tokens are opaque random strings kept in memory (not JWTs): nothing outside this API server verifies
them, so a signature would add nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localcluster.errors import ApiError

Lookup = Callable[[str, str, str], dict[str, Any] | None]
"""(plural, namespace, name) -> the stored core/v1 object, if it exists."""

ADMIN_USER = "kubernetes-admin"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS_USER = "system:anonymous"
SERVICEACCOUNT_PREFIX = "system:serviceaccount:"
DEFAULT_TOKEN_SECONDS = 3607
"""What the kubelet asks for (a real kubelet's default for kube-api-access volumes)."""
MAX_TOKEN_SECONDS = 48 * 3600


@dataclass(frozen=True, slots=True)
class UserInfo:
    """An authenticated (or anonymous) identity."""

    name: str
    """User name, e.g. `system:serviceaccount:ns:sa`."""
    groups: tuple[str, ...] = ()
    """Groups, e.g. `system:serviceaccounts:ns`, `system:authenticated`."""
    uid: str = ""
    """The ServiceAccount's uid for ServiceAccount tokens."""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)
    """Bound object claims: `authentication.kubernetes.io/pod-name` and `.../pod-uid`."""

    @property
    def is_admin(self) -> bool:
        """Whether RBAC is bypassed (group `system:masters`)."""
        return MASTERS in self.groups

    def as_dict(self) -> dict[str, Any]:
        """The `UserInfo` of authentication.k8s.io/v1 (what admission reviews carry)."""
        out: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


ADMIN = UserInfo(ADMIN_USER, (MASTERS, AUTHENTICATED))
ANONYMOUS = UserInfo(ANONYMOUS_USER, (UNAUTHENTICATED,))


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    """The identity a ServiceAccount's tokens carry."""
    return UserInfo(
        f"{SERVICEACCOUNT_PREFIX}{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
        uid,
    )


@dataclass(frozen=True, slots=True)
class BoundToken:
    """What one issued ServiceAccount token stands for."""

    namespace: str
    """The ServiceAccount's namespace."""
    service_account: str
    """The ServiceAccount's name."""
    sa_uid: str
    """Its uid when the token was issued (a recreated ServiceAccount does not inherit tokens)."""
    expires: float
    """time.time() after which the token is refused."""
    pod: str = ""
    """The pod the token is bound to; empty for an unbound TokenRequest."""
    pod_uid: str = ""
    """That pod's uid."""


class Authenticator:
    """Maps bearer tokens to users. Lookups read the live ServiceAccount and pod objects."""

    def __init__(self, lookup: Lookup, *, admin_token: str | None = None) -> None:
        self.lookup = lookup
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        """The token of the admin kubeconfig."""
        self._tokens: dict[str, BoundToken] = {}

    def issue(
        self,
        namespace: str,
        service_account: str,
        *,
        pod: dict[str, Any] | None = None,
        seconds: int = DEFAULT_TOKEN_SECONDS,
    ) -> tuple[str, float]:
        """A new token for the ServiceAccount (bound to `pod` when given) and its expiry time.
        404 when the ServiceAccount does not exist."""
        sa = self.lookup("serviceaccounts", namespace, service_account)
        if sa is None:
            raise ApiError(404, f'serviceaccounts "{service_account}" not found')
        seconds = max(600, min(int(seconds), MAX_TOKEN_SECONDS))
        self._expire()
        token = secrets.token_urlsafe(32)
        meta = (pod or {}).get("metadata") or {}
        bound = BoundToken(
            namespace,
            service_account,
            sa["metadata"]["uid"],
            time.time() + seconds,
            meta.get("name", ""),
            meta.get("uid", ""),
        )
        self._tokens[token] = bound
        return token, bound.expires

    def _expire(self) -> None:
        now = time.time()
        for token in [t for t, b in self._tokens.items() if b.expires < now]:
            del self._tokens[token]

    def authenticate(self, authorization: str | None) -> UserInfo:
        """The user an `Authorization` header stands for; 401 for a token that is not valid."""
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        if secrets.compare_digest(token, self.admin_token):
            return ADMIN
        bound = self._tokens.get(token)
        if bound is None or bound.expires < time.time() or not self._still_bound(bound):
            self._tokens.pop(token, None)
            raise unauthorized()
        user = service_account_user(bound.namespace, bound.service_account, bound.sa_uid)
        if bound.pod:
            extra: dict[str, tuple[str, ...]] = {
                "authentication.kubernetes.io/pod-name": (bound.pod,),
                "authentication.kubernetes.io/pod-uid": (bound.pod_uid,),
            }
            user = UserInfo(user.name, user.groups, user.uid, extra)
        return user

    def _still_bound(self, bound: BoundToken) -> bool:
        sa = self.lookup("serviceaccounts", bound.namespace, bound.service_account)
        if sa is None or sa["metadata"]["uid"] != bound.sa_uid:
            return False
        if not bound.pod:
            return True
        pod = self.lookup("pods", bound.namespace, bound.pod)
        return pod is not None and pod["metadata"]["uid"] == bound.pod_uid


def unauthorized() -> ApiError:
    """401, worded like the real server."""
    return ApiError(401, "Unauthorized", reason="Unauthorized")
