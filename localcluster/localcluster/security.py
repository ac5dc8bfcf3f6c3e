"""The API server's front door: authenticate each request (`localcluster.auth`), then authorize it
with RBAC (`localcluster.rbac`). `ApiServer` calls `Security.check` once per request, before routing;
the user is kept on the request (`request[apiserver.USER]`) for whatever runs later (e.g. admission)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localcluster import rbac
from localcluster.auth import Authenticator, UserInfo
from localcluster.errors import ApiError
from localcluster.serviceaccounts import ServiceAccounts
from localcluster.store import Store


class Security:
    """Authentication, RBAC and ServiceAccounts of one cluster."""

    def __init__(self, store: Store, *, admin_token: str | None = None) -> None:
        self.store = store

        def lookup(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
            return store.objects[("", plural)].get((namespace, name))

        def list_objects(plural: str, namespace: str | None) -> list[dict[str, Any]]:
            objects = store.objects[(rbac.RBAC_GROUP, plural)]
            if namespace is None:
                return list(objects.values())
            return [o for (ns, _), o in objects.items() if ns == namespace]

        self.authenticator = Authenticator(lookup, admin_token=admin_token)
        self.authorizer = rbac.Authorizer(list_objects)
        self.service_accounts = ServiceAccounts(store, self.authenticator)

    def install(self) -> None:
        """Create the RBAC defaults and start the ServiceAccount controller and admission plugin."""
        for plural, obj in rbac.bootstrap_objects():
            rt = self.store.type_of(rbac.RBAC_GROUP, "v1", plural)
            if ("", obj["metadata"]["name"]) not in self.store.objects[rt.storage_key]:
                self.store.create(rt, "", obj)
        self.service_accounts.install()

    def check(self, method: str, path: str, query: Mapping[str, str], authorization: str | None) -> UserInfo:
        """The request's user; 401 for a bad token, 403 when RBAC does not allow it."""
        user = self.authenticator.authenticate(authorization)
        attrs = rbac.request_attributes(method, path, query)
        self.authorizer.authorize(user, attrs)
        return user

    def token_request(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """TokenRequest for a ServiceAccount."""
        if not isinstance(body, dict):
            raise ApiError(400, "a TokenRequest must be an object")
        return self.service_accounts.token_request(namespace, name, body)
