{{/* Names and labels. */}}
{{- define "relay-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relay-fleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "relay-fleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "relay-fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relay-fleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "relay-fleet.selector" (list . "relay") */}}
{{- define "relay-fleet.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "relay-fleet.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "relay-fleet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The hardening every container gets. */}}
{{- define "relay-fleet.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- /* The relay with the kernel fast path: nft needs CAP_NET_ADMIN in its effective set,
which Kubernetes gives a container only when it runs as root. NET_ADMIN is its one capability,
in the pod's own network namespace. */ -}}
{{- define "relay-fleet.fastPathSecurityContext" -}}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
  add: [NET_ADMIN]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "relay-fleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The Secret holding the Redis password (bundled) or URL (external). */}}
{{- define "relay-fleet.redisSecretName" -}}
{{- if .Values.redis.bundled -}}
{{- .Values.redis.existingPasswordSecret | default (printf "%s-redis" (include "relay-fleet.fullname" .)) -}}
{{- else -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis-url" (include "relay-fleet.fullname" .)) -}}
{{- end -}}
{{- end }}

{{/* Environment giving RELAYFLEET_STORE and RELAYFLEET_STORE_PREFIX. */}}
{{- define "relay-fleet.storeEnv" -}}
{{- if .Values.redis.bundled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "relay-fleet.redisSecretName" . }}
      key: {{ if .Values.redis.existingPasswordSecret }}{{ .Values.redis.existingPasswordSecretKey }}{{ else }}password{{ end }}
- name: RELAYFLEET_STORE
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis.%s.svc:6379/0" (include "relay-fleet.fullname" .) .Release.Namespace | quote }}
{{- else }}
- name: RELAYFLEET_STORE
  valueFrom:
    secretKeyRef:
      name: {{ include "relay-fleet.redisSecretName" . }}
      key: {{ if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}
- name: RELAYFLEET_STORE_PREFIX
  value: {{ .Values.storePrefix | quote }}
{{- end }}

{{/* Spread pods of a component over nodes unless told otherwise. */}}
{{- define "relay-fleet.spread" -}}
{{- $root := index . 0 -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "relay-fleet.selector" . | nindent 12 }}
{{- end }}

{{/* How clients reach the relays: hostNetwork, NodePort or LoadBalancer (one UDP Service per relay). */}}
{{- define "relay-fleet.relayExposure" -}}
{{- if .Values.relays.hostNetwork }}hostNetwork{{ else }}{{ .Values.relays.service.type }}{{ end -}}
{{- end }}

{{/* "true" when each relay advertises its own load balancer's address, read from the
relay-addresses ConfigMap; empty otherwise. */}}
{{- define "relay-fleet.perRelayAddresses" -}}
{{- if and (eq (include "relay-fleet.relayExposure" .) "LoadBalancer") (not .Values.relays.addresses) }}true{{ end -}}
{{- end }}

{{/* The rules of one part's ClusterRole, from files/rbac.yaml: a symlink to deploy/rbac.yaml,
the single source of each part's least privilege. include "relay-fleet.rbacRules" (list . "relay") */}}
{{- define "relay-fleet.rbacRules" -}}
{{- $root := index . 0 -}}
{{- $source := printf "relayfleet-%s" (index . 1) -}}
{{- $rules := dict -}}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($root.Files.Get "files/rbac.yaml") -1 }}
{{- $role := fromYaml $doc }}
{{- if and $role (eq (get $role "kind") "ClusterRole") }}
{{- $_ := set $rules $role.metadata.name $role.rules }}
{{- end }}
{{- end }}
{{- if not (hasKey $rules $source) }}
{{- fail (printf "files/rbac.yaml (deploy/rbac.yaml) has no ClusterRole %s" $source) }}
{{- end }}
{{- toYaml (get $rules $source) }}
{{- end }}

{{/* The Secret holding the relays' API token (relays.api): given, or the generated one. */}}
{{- define "relay-fleet.relayApiTokenSecretName" -}}
{{- .Values.relays.api.token.existingSecret | default (printf "%s-relay-api-token" (include "relay-fleet.fullname" .)) -}}
{{- end }}
