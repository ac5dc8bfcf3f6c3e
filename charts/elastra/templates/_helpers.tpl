{{/* Names, labels and the derived lists every template shares. */}}

{{- define "elastra.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "elastra.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object, without app.kubernetes.io/component. */}}
{{- define "elastra.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "elastra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: elastra
{{- end -}}

{{- define "elastra.labels" -}}
{{ include "elastra.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "elastra.trainerLabels" -}}
{{ include "elastra.baseLabels" . }}
app.kubernetes.io/component: trainer
{{- end -}}

{{- define "elastra.selectorLabels" -}}
app.kubernetes.io/name: {{ include "elastra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "elastra.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "elastra.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "elastra.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "elastra.metricsServiceName" -}}
{{- printf "%s-metrics" (include "elastra.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The namespaces the operator watches, one per line (scope "namespaced" only). */}}
{{- define "elastra.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "\n" (uniq .Values.watchNamespaces) -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The job namespaces (the operator reads Secrets there), one per line. */}}
{{- define "elastra.trainerNamespaces" -}}
{{- if .Values.trainer.namespaces -}}
{{- join "\n" (uniq .Values.trainer.namespaces) -}}
{{- else if eq .Values.scope "namespaced" -}}
{{- include "elastra.watchNamespaces" . -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}
