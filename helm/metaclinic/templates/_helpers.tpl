{{/* Names */}}
{{- define "metaclinic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "metaclinic.fullname" -}}
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

{{- define "metaclinic.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels; pass (dict "ctx" $ "component" "sfu") */}}
{{- define "metaclinic.labels" -}}
helm.sh/chart: {{ include "metaclinic.chart" .ctx }}
{{ include "metaclinic.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: metaclinic
{{- end }}

{{- define "metaclinic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metaclinic.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "metaclinic.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The port of a "host:port" listen address. */}}
{{- define "metaclinic.port" -}}
{{- regexFind "[0-9]+$" . }}
{{- end }}

{{- define "metaclinic.signalingPort" -}}8080{{- end }}

{{- define "metaclinic.sfuControlPort" -}}
{{- include "metaclinic.port" (default "0.0.0.0:7001" .Values.sfu.config.control.listen) }}
{{- end }}

{{/* Secrets: the Secret that holds each item, and its key. */}}
{{- define "metaclinic.controlCredentialSecret" -}}
{{- default (printf "%s-secrets" (include "metaclinic.fullname" .)) .Values.secrets.controlCredential.existingSecret }}
{{- end }}

{{- define "metaclinic.bookingKeySecret" -}}
{{- default (printf "%s-secrets" (include "metaclinic.fullname" .)) .Values.secrets.bookingKey.existingSecret }}
{{- end }}

{{- define "metaclinic.auditKeySecret" -}}
{{- default (printf "%s-secrets" (include "metaclinic.fullname" .)) .Values.secrets.auditKey.existingSecret }}
{{- end }}

{{- define "metaclinic.turnSecret" -}}
{{- default (printf "%s-secrets" (include "metaclinic.fullname" .)) .Values.secrets.turnSecret.existingSecret }}
{{- end }}

{{- define "metaclinic.bookingKeyProvided" -}}
{{- if or .Values.secrets.bookingKey.existingSecret .Values.secrets.bookingKey.value }}true{{ end }}
{{- end }}

{{/* The Redis URL multi-node state will use (empty when none is configured). */}}
{{- define "metaclinic.redisUrl" -}}
{{- if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else if .Values.redis.bundled.enabled }}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "metaclinic.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
TOML from a map of sections: (dict "prefix" "" "map" $sections). Scalars and lists are written
as JSON, which TOML reads the same (strings with JSON escapes, numbers, booleans, arrays);
nested maps become [tables]. Keys come out sorted, so the text (and its checksum) only changes
when a value does. Null values are left out (the process default applies).
*/}}
{{- define "metaclinic.toml" -}}
{{- $prefix := .prefix }}
{{- range $key, $value := .map }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{- if and (kindIs "slice" $value) (gt (len $value) 0) (kindIs "map" (index $value 0)) }}
{{- /* A list of tables (webhooks.endpoints): TOML inline tables, not JSON objects. */}}
{{ $key }} = [{{ range $i, $item := $value }}{{ if $i }}, {{ end }}{ {{- $sep := " " }}{{ range $k, $v := $item }}{{ $sep }}{{ $k }} = {{ toJson $v }}{{ $sep = ", " }}{{ end }} }{{ end }}]
{{- else }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key, $value := .map }}
{{- if kindIs "map" $value }}
{{- $name := ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "") }}

[{{ $name }}]
{{- include "metaclinic.toml" (dict "prefix" $name "map" $value) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The SFU configuration: values plus what the chart owns. */}}
{{- define "metaclinic.sfuConfig" -}}
{{- $c := deepCopy .Values.sfu.config }}
{{- $t := .Values.sfu.turn }}
{{- $turn := dict "enabled" $t.enabled "udp_port" $t.udpPort "tcp_port" $t.tcpPort "realm" $t.realm "max_allocations_per_user" $t.maxAllocationsPerUser "max_allocations" $t.maxAllocations "max_bandwidth_bps" $t.maxBandwidthBps }}
{{- if $t.tlsSecretName }}
{{- $_ := set $turn "tls_port" $t.tlsPort }}
{{- $_ := set $turn "tls_public_port" $t.publicTlsPort }}
{{- $_ := set $turn "tls_cert_path" "/etc/metaclinic/turn-tls/tls.crt" }}
{{- $_ := set $turn "tls_key_path" "/etc/metaclinic/turn-tls/tls.key" }}
{{- if $t.tlsHost }}
{{- $_ := set $turn "tls_host" $t.tlsHost }}
{{- end }}
{{- else }}
{{- $_ := set $turn "tls_port" 0 }}
{{- end }}
{{- $_ := set $c "turn" $turn }}
{{- $spatial := default dict $c.spatial }}
{{- $_ := set $spatial "hrtf_path" "/usr/share/metaclinic/hrtf/MIT_KEMAR_normal_pinna.sofa" }}
{{- $_ := set $c "spatial" $spatial }}
{{- toYaml $c }}
{{- end }}

{{/* The signaling configuration: values plus what the chart owns. */}}
{{- define "metaclinic.signalingConfig" -}}
{{- $c := deepCopy .Values.signaling.config }}
{{- $http := default dict $c.http }}
{{- $_ := set $http "listen" (printf "0.0.0.0:%s" (include "metaclinic.signalingPort" .)) }}
{{- if and (not $http.public_url) .Values.signaling.ingress.enabled }}
{{- $_ := set $http "public_url" (printf "https://%s" .Values.signaling.ingress.host) }}
{{- end }}
{{- if not $http.public_url }}
{{- $_ := unset $http "public_url" }}
{{- end }}
{{- $_ := set $c "http" $http }}
{{- $booking := default dict $c.booking }}
{{- $fhir := default dict $booking.fhir }}
{{- $_ := set $fhir "private_key_file" "/etc/metaclinic/booking/booking-key.pem" }}
{{- $_ := set $booking "fhir" $fhir }}
{{- $_ := set $c "booking" $booking }}
{{- $_ := set $c "audit" (dict "path" (printf "%s/audit.jsonl" .Values.signaling.audit.mountPath)) }}
{{- $_ := set $c "dev" (dict "enabled" false) }}
{{- toYaml $c }}
{{- end }}

{{/*
sfu.nodes for signaling, in the syntax the config loader reads from an environment variable
(figment: [{key="value", ...}]). The credential is $(SFU_CONTROL_CREDENTIAL): Kubernetes
substitutes the Secret's value, so the ConfigMap never holds it.
*/}}
{{- define "metaclinic.sfuNodesEnv" -}}
{{- $nodes := list }}
{{- range .Values.signaling.sfuNodes }}
{{- $nodes = append $nodes (printf "{id=%s,url=%s,credential=\"$(SFU_CONTROL_CREDENTIAL)\"}" (toJson .id) (toJson .url)) }}
{{- end }}
{{- printf "[%s]" (join "," $nodes) }}
{{- end }}

{{/* Pod annotations that roll pods when their configuration changes. */}}
{{- define "metaclinic.secretChecksum" -}}
{{- printf "%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s" .Values.secrets.controlCredential.existingSecret .Values.secrets.controlCredential.key .Values.secrets.controlCredential.value .Values.secrets.bookingKey.existingSecret .Values.secrets.bookingKey.key .Values.secrets.bookingKey.value .Values.secrets.auditKey.existingSecret .Values.secrets.auditKey.key .Values.secrets.auditKey.value .Values.secrets.turnSecret.existingSecret .Values.secrets.turnSecret.key .Values.secrets.turnSecret.value | sha256sum }}
{{- end }}

{{/* The rendered configuration files (ConfigMap data; their checksums roll the pods). */}}
{{- define "metaclinic.sfuToml" -}}
{{- include "metaclinic.toml" (dict "prefix" "" "map" (fromYaml (include "metaclinic.sfuConfig" .))) | trim }}
{{- end }}

{{- define "metaclinic.signalingToml" -}}
{{- include "metaclinic.toml" (dict "prefix" "" "map" (fromYaml (include "metaclinic.signalingConfig" .))) | trim }}
{{- end }}
