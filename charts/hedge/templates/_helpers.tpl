{{/*
Chart name, truncated to 63 characters (the DNS label limit of Kubernetes names).
*/}}
{{- define "hedge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters. When the release name already contains
the chart name it is used as is, so `helm install hedge ./charts/hedge` gives `hedge`, not
`hedge-hedge`.
*/}}
{{- define "hedge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's objects: "<fullname>-<component>", still at most 63 characters.
Usage: include "hedge.componentName" (list . "operator")
*/}}
{{- define "hedge.componentName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $prefix := include "hedge.fullname" $root | trunc (int (sub 62 (len $component))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $component }}
{{- end }}

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "hedge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "hedge.labels" -}}
helm.sh/chart: {{ include "hedge.chart" . }}
{{ include "hedge.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hedge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels shared by all components of the release.
*/}}
{{- define "hedge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hedge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. Usage: include "hedge.componentLabels" (list . "gateway")
*/}}
{{- define "hedge.componentLabels" -}}
{{ include "hedge.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Selector labels of one component. Usage: include "hedge.componentSelectorLabels" (list . "gateway")
*/}}
{{- define "hedge.componentSelectorLabels" -}}
{{ include "hedge.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
ServiceAccount name of one component: the configured name, else the component name when the
chart creates it, else "default". Usage: include "hedge.serviceAccountName" (list . "operator")
*/}}
{{- define "hedge.serviceAccountName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $sa := (index $root.Values $component).serviceAccount }}
{{- if $sa.create }}
{{- default (include "hedge.componentName" (list $root $component)) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else repository:tag (tag defaults
to the chart's appVersion).
*/}}
{{- define "hedge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
True ("true") when the release watches every namespace, so RBAC is cluster-wide.
*/}}
{{- define "hedge.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{- end }}
{{- end }}

{{/*
The namespaces where Hedge may read Secrets (fallback provider API keys), as a JSON list:
rbac.secretNamespaces, else the watched namespaces. "[]" (a cluster-wide install that names
none) means nowhere.
*/}}
{{- define "hedge.secretNamespaces" -}}
{{- if .Values.rbac.secretNamespaces }}
{{- toJson .Values.rbac.secretNamespaces }}
{{- else }}
{{- toJson .Values.watchNamespaces }}
{{- end }}
{{- end }}

{{/*
Env vars from the downward API that both processes get: the pod's own name and namespace
(used in logs, Events and the kopf peering identity).
*/}}
{{- define "hedge.downwardEnv" -}}
- name: HEDGE_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: HEDGE_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
Policy-scanner (checkov) findings on the Deployments that Hedge accepts, each with its reason,
so a scan of the rendered chart shows them as skipped and explained rather than failed.
Usage: include "hedge.deploymentCheckovSkips" (list . "operator")
*/}}
{{- define "hedge.deploymentCheckovSkips" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
checkov.io/skip1: >-
  CKV_K8S_38=The {{ $component }} watches the Kubernetes API, so its pods need a
  ServiceAccount token; only these pods mount it (the ServiceAccount itself does not).
{{- if not $root.Values.image.digest }}
checkov.io/skip2: >-
  CKV_K8S_43=The image tag defaults to the chart's appVersion, an immutable release tag;
  set image.digest to pull by digest.
checkov.io/skip3: >-
  CKV_K8S_15=Release tags are never moved, so IfNotPresent pulls the same image as Always
  would; set image.digest to pin it outright.
{{- end }}
{{- end }}

{{/*
The gateways' headless admin Service, which the operator reads the gateways' metrics through.
*/}}
{{- define "hedge.gatewayAdminService" -}}
{{- include "hedge.componentName" (list . "gateway-admin") }}
{{- end }}
