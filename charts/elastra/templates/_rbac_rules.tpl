{{/*
The operator's permissions on namespaced resources. The same list goes into the ClusterRole (scope
"cluster") or into a Role per watched namespace (scope "namespaced"), so both modes grant the same verbs.
*/}}
{{- define "elastra.operatorNamespacedRules" -}}
# Its own resources: TrainingJobs drive everything; Checkpoints are created, pruned and finalized.
- apiGroups: [elastra.dev]
  resources: [trainingjobs, checkpoints]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [elastra.dev]
  resources: [trainingjobs/status, checkpoints/status]
  verbs: [get, patch, update]
# Worker pods: one per node, replaced on every rescale.
- apiGroups: [""]
  resources: [pods]
  verbs: [create, delete, get, list, watch, patch]
# The rendezvous Service and the membership record of each job.
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [create, delete, get, list, watch, patch, update]
# Events on TrainingJobs and Checkpoints (Kopf posts them as well).
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Each job's own worker identity: a ServiceAccount, and a Role (its own worker pods: get, patch; its
# membership record: read) bound to it. The API server lets the operator grant only what it holds.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, get]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, get, patch]
# No Secrets here: they are read only in the job namespaces (trainer-rbac.yaml).
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create, get, list, watch, patch, update]
{{- end -}}
