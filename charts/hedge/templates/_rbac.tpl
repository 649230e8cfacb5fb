{{/*
RBAC rules, one named template per scope so cluster-wide and per-namespace installs share
them. No wildcards: every rule names its verbs and resources.
*/}}

{{/* Operator: what it does inside the namespaces it watches. */}}
{{- define "hedge.operator.namespacedRules" -}}
# The ModelDeployments it reconciles (kopf patches annotations and finalizers on the object).
- apiGroups: ["hedge.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["hedge.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch"]
# Children carry ownerReferences with blockOwnerDeletion: true; OpenShift's
# OwnerReferencesPermissionEnforcement admission then requires update on the owner's
# finalizers subresource (no other `update` anywhere).
- apiGroups: ["hedge.dev"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
# The ClientPolicies whose keys it checks (status: Ready, keys found); kopf records what it
# handled in annotations on the object, hence patch on it too.
- apiGroups: ["hedge.dev"]
  resources: ["clientpolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["hedge.dev"]
  resources: ["clientpolicies/status"]
  verbs: ["patch"]
# The children it applies with server-side apply (field manager hedge-operator).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# One NetworkPolicy per ModelDeployment: only the gateways, the operator and
# spec.serving.allowFrom reach the engine pods (operator --no-network-policy: none).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Engine pods, read for readiness and failure reasons in the status; before a scale-down the
# autoscaler sets their pod-deletion-cost annotation (the pod with the least work goes).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Events about what it did and why a spec cannot work.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if and .Values.operator.peering.enabled (not (include "hedge.clusterWide" .)) }}
# kopf peering between replicas, one KopfPeering per watched namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  resourceNames: [{{ .Values.operator.peering.name | quote }}]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{/* Operator: cluster-scoped reads kopf needs in every mode. */}}
{{- define "hedge.operator.clusterRules" -}}
# Nodes' labels and taints, read only while an engine pod cannot be scheduled, to say why
# (NoMatchingNodes, UntoleratedTaint naming the taint; docs/placement.md).
{{- if .Values.operator.readNodes }}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
{{- end }}
# kopf discovers the resources it serves and notices CRDs that appear or go (read only).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if include "hedge.clusterWide" . }}
{{- if .Values.operator.peering.enabled }}
# kopf peering between replicas: one cluster-wide ClusterKopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  resourceNames: [{{ .Values.operator.peering.name | quote }}]
  verbs: ["patch"]
{{- end }}
{{- else }}
# kopf notices when a watched namespace is created or deleted (read only).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}

{{/* Gateway: routing reads inside the namespaces it serves. */}}
{{- define "hedge.gateway.namespacedRules" -}}
# The ModelDeployments it routes to (model names, fallback providers, canary weights).
- apiGroups: ["hedge.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch"]
# The tenants: which client keys act for which namespace, and their limits.
- apiGroups: ["hedge.dev"]
  resources: ["clientpolicies"]
  verbs: ["get", "list", "watch"]
# The ready engine pods behind each ModelDeployment's Service.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Fallback provider API keys, referenced by ModelDeployments in their namespace, and client
API keys, referenced by ClientPolicies in theirs. The operator only checks that a referenced
Secret and key exist and are labelled (one GET by name; values are dropped at once); the
gateway watches the Secrets to use their values (provider keys by name, client keys by the
hedge.dev/client-key=true label). Usage: include "hedge.secretRules" "gateway"
*/}}
{{- define "hedge.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  {{- if eq . "operator" }}
  verbs: ["get"]
  {{- else }}
  verbs: ["get", "list", "watch"]
  {{- end }}
{{- end }}

{{/*
Roles (or one ClusterRole) with one component's rules plus their bindings.
Usage: include "hedge.rbacFor" (dict "root" . "component" "operator" "rules" "hedge.operator.namespacedRules")
*/}}
{{- define "hedge.rbacFor" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- $name := include "hedge.componentName" (list $root $component) }}
{{- $secretsName := include "hedge.componentName" (list $root (printf "%s-secrets" $component)) }}
{{- $sa := include "hedge.serviceAccountName" (list $root $component) }}
{{- $clusterWide := include "hedge.clusterWide" $root }}
{{- $secretNamespaces := include "hedge.secretNamespaces" $root | fromJsonArray }}
{{- if $clusterWide }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $name }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
rules:
  {{- include .rules $root | nindent 2 }}
  {{- if .clusterRules }}
  {{- include .clusterRules $root | nindent 2 }}
  {{- end }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $root.Release.Namespace }}
{{- else }}
{{- if .clusterRules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $name }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
rules:
  {{- include .clusterRules $root | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- range $root.Values.watchNamespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ . }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
rules:
  {{- include $.rules $root | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ . }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end }}
{{- /*
Secret reads sit in their own "-secrets" Roles so they are easy to find, narrow or audit: one
Role per namespace where fallback provider keys or client keys live (rbac.secretNamespaces,
by default the watched namespaces). Never a ClusterRole: a cluster-wide install reads Secrets only in the
namespaces it names.
*/}}
{{- range $secretNamespaces }}
---
# Read access to Secrets where fallback provider keys and client keys live
# (rbac.secretNamespaces).
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $secretsName }}
  namespace: {{ . }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
rules:
  {{- include "hedge.secretRules" $component | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $secretsName }}
  namespace: {{ . }}
  labels:
    {{- include "hedge.componentLabels" (list $root $component) | nindent 4 }}
  annotations:
    checkov.io/skip1: >-
      CKV2_K8S_5=Fallback providers' API keys and client keys are Secrets next to the
      ModelDeployments and ClientPolicies that name them; {{ $component }} reads them in this
      namespace only, one of those listed in rbac.secretNamespaces (or watchNamespaces).
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $secretsName }}
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end }}
