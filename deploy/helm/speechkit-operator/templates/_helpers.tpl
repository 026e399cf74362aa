{{/*
The chart name, or nameOverride.
*/}}
{{- define "speechkit-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>". At most 63 characters (a DNS label).
*/}}
{{- define "speechkit-operator.fullname" -}}
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
The chart's name and version, for the helm.sh/chart label.
*/}}
{{- define "speechkit-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "speechkit-operator.labels" -}}
helm.sh/chart: {{ include "speechkit-operator.chart" . }}
{{ include "speechkit-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: speechkit-operator
{{- end }}

{{/*
Labels that select the operator's pods.
*/}}
{{- define "speechkit-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "speechkit-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "speechkit-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "speechkit-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository and tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "speechkit-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (include "speechkit-operator.envValue" (.Values.image.tag | default ""))) }}
{{- end }}

{{/*
One settings value as an environment variable's text. Helm reads every number in values.yaml as
a float64, which Go would print as "1e+06" from a million on: whole numbers are printed as
integers instead. Lists are joined with commas.
*/}}
{{- define "speechkit-operator.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}
{{- join "," . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/*
The arguments for a log format (dict "value" <logFormat> "key" <its values key>): none for plain,
the default, so that the arguments stay minimal; `--log-format json` for json.
*/}}
{{- define "speechkit-operator.logFormatArgs" -}}
{{- $format := .value | default "plain" }}
{{- if eq $format "json" }}
- --log-format
- json
{{- else if ne $format "plain" }}
{{- fail (printf "%s must be plain or json, not %q" .key (toString $format)) }}
{{- end }}
{{- end }}

{{/*
Checks of extra volumes and mounts (dict "volumes" <list> "mounts" <list> "prefix" <values path>,
optionally "names" and "paths", the chart's own volume names and mount paths: tmp and /tmp by
default): the chart's own names and paths are refused, and each mount names a volume of the pod.
Renders nothing.
*/}}
{{- define "speechkit-operator.checkVolumes" -}}
{{- $own := .names | default (list "tmp") }}
{{- $paths := .paths | default (list "/tmp") }}
{{- $names := $own }}
{{- range .volumes }}
{{- if has (toString .name) $own }}
{{- fail (printf "%sextraVolumes: the volume name %s is the chart's own; choose another" $.prefix (toString .name)) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- range .mounts }}
{{- if not (has .name $names) }}
{{- fail (printf "%sextraVolumeMounts: %q is not a volume of the pod: add it to %sextraVolumes" $.prefix (toString .name) $.prefix) }}
{{- end }}
{{- $path := trimSuffix "/" (toString .mountPath) }}
{{- if has $path $paths }}
{{- fail (printf "%sextraVolumeMounts: %s is the chart's own mount; choose another mountPath" $.prefix $path) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in each namespace it watches.
- transcriptionjobs: kopf lists and watches them, and patches finalizers and its annotations
  (no get: kopf works from the watch stream);
- transcriptionjobs/status: the operator writes the status through the status subresource;
- events: kopf posts core/v1 Events about the jobs;
- secrets: the operator reads (only reads, by name) the credentials and storage Secrets jobs name.
*/}}
{{- define "speechkit-operator.namespacedRules" -}}
- apiGroups: ["speechkit.dev"]
  resources: ["transcriptionjobs"]
  # get: a fresh read when a job changed under a step; delete: ttlSecondsAfterFinished; patch:
  # kopf removes the finalizer an earlier version left; create: a batch's jobs.
  verbs: ["list", "watch", "get", "patch", "delete", "create"]
- apiGroups: ["speechkit.dev"]
  resources: ["transcriptionjobs/status"]
  verbs: ["patch"]
- apiGroups: ["speechkit.dev"]
  resources: ["transcriptionbatches"]
  # patch: kopf removes the finalizer an earlier version left.
  verbs: ["list", "watch", "get", "patch"]
- apiGroups: ["speechkit.dev"]
  resources: ["transcriptionbatches/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}

{{/*
The cluster-scoped rule the operator always needs: kopf lists and watches CRDs to notice its
resource kinds appear, change and disappear.
*/}}
{{- define "speechkit-operator.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
The operator container's environment: the settings as SPEECHKIT_OPERATOR_* variables, then extraEnv.
With recognizer.enabled the chart's own recognition service wins over settings.backend and
settings.self_hosted_url, so that each name appears once. extraEnv may not repeat a name set here.
*/}}
{{- define "speechkit-operator.env" -}}
{{- $settings := deepCopy (.Values.settings | default dict) }}
{{- if .Values.recognizer.enabled }}
{{- $_ := set $settings "backend" "self-hosted" }}
{{- $_ := set $settings "self_hosted_url" (include "speechkit-operator.recognizer.url" .) }}
{{- else if and (eq (toString $settings.backend) "self-hosted") (eq (toString ($settings.self_hosted_url | default "")) "") }}
{{- fail "settings.backend self-hosted needs settings.self_hosted_url (or recognizer.enabled=true)" }}
{{- end }}
{{- $names := list }}
{{- range $key, $value := $settings }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{- $name := printf "SPEECHKIT_OPERATOR_%s" (upper $key) }}
{{- $names = append $names $name }}
- name: {{ $name }}
  value: {{ include "speechkit-operator.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- /* Leader election keeps its Lease in the pod's namespace unless settings.lease_namespace says otherwise. */}}
{{- $names = append $names "POD_NAMESPACE" }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if and .Values.recognizer.enabled .Values.recognizer.apiKeySecret.enabled }}
{{- /* The recognizer's own API key, from the Secret it reads it from. */}}
{{- $names = append $names "SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY" }}
- name: SPEECHKIT_OPERATOR_SELF_HOSTED_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "speechkit-operator.recognizer.apiKeySecretName" . | quote }}
      key: {{ .Values.recognizer.apiKeySecret.operatorKey | default .Values.recognizer.apiKeySecret.key | quote }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name $names }}
{{- fail (printf "extraEnv: %s is set by the chart; set it in settings instead" .name) }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The recognition service's resources: "<fullname>-recognizer", at most 63 characters.
*/}}
{{- define "speechkit-operator.recognizer.fullname" -}}
{{- printf "%s-recognizer" (include "speechkit-operator.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
The Secret with the recognition service's API key: recognizer.apiKeySecret.name, or the chart's own.
*/}}
{{- define "speechkit-operator.recognizer.apiKeySecretName" -}}
{{- .Values.recognizer.apiKeySecret.name | default (printf "%s-api-key" (include "speechkit-operator.recognizer.fullname" .)) }}
{{- end }}

{{/*
Where the recognition service keeps its operations (SPEECHKIT_SERVE_STATE_DIR).
*/}}
{{- define "speechkit-operator.recognizer.stateDir" -}}
/var/lib/speechkit-recognizer
{{- end }}

{{/*
The PersistentVolumeClaim of the recognition service's state (persistence.type pvc).
*/}}
{{- define "speechkit-operator.recognizer.claimName" -}}
{{- .Values.recognizer.persistence.existingClaim | default (printf "%s-state" (include "speechkit-operator.recognizer.fullname" .)) }}
{{- end }}

{{/*
The recognition service's ServiceAccount.
*/}}
{{- define "speechkit-operator.recognizer.serviceAccountName" -}}
{{- default (include "speechkit-operator.recognizer.fullname" .) .Values.recognizer.serviceAccount.name }}
{{- end }}

{{/*
The address the operator reaches the recognition service at, through its Service.
*/}}
{{- define "speechkit-operator.recognizer.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "speechkit-operator.recognizer.fullname" .) .Release.Namespace (include "speechkit-operator.envValue" .Values.recognizer.service.port) }}
{{- end }}

{{/*
Labels that select the recognition service's pods. Their app.kubernetes.io/name differs from the
operator's, so that neither Deployment's selector matches the other's pods.
*/}}
{{- define "speechkit-operator.recognizer.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-recognizer" (include "speechkit-operator.name" . | trunc 52 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: recognizer
{{- end }}

{{/*
Labels of the recognition service's resources.
*/}}
{{- define "speechkit-operator.recognizer.labels" -}}
helm.sh/chart: {{ include "speechkit-operator.chart" . }}
{{ include "speechkit-operator.recognizer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: speechkit-operator
{{- end }}

{{/*
The recognition service's image: repository and tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "speechkit-operator.recognizer.image" -}}
{{- printf "%s:%s" .Values.recognizer.image.repository (default .Chart.AppVersion (include "speechkit-operator.envValue" (.Values.recognizer.image.tag | default ""))) }}
{{- end }}

{{/*
The recognition service container's environment: workers, queue size, retention, the API key from
a Secret, the state directory, recognizer.settings as SPEECHKIT_SERVE_* variables (allowed_hosts
defaulting to the host of settings.storage_endpoint), then recognizer.extraEnv. Host and port are
command-line arguments.
*/}}
{{- define "speechkit-operator.recognizer.env" -}}
{{- $recognizer := .Values.recognizer }}
{{- $explicit := dict "workers" $recognizer.workers "queue_size" $recognizer.queueSize "retention_seconds" $recognizer.retentionSeconds }}
{{- $names := list "SPEECHKIT_SERVE_HOST" "SPEECHKIT_SERVE_PORT" }}
{{- range $key := list "workers" "queue_size" "retention_seconds" }}
{{- $name := printf "SPEECHKIT_SERVE_%s" (upper $key) }}
{{- $names = append $names $name }}
- name: {{ $name }}
  value: {{ include "speechkit-operator.envValue" (get $explicit $key) | quote }}
{{- end }}
{{- if $recognizer.apiKeySecret.enabled }}
{{- $names = append $names "SPEECHKIT_SERVE_API_KEYS" }}
- name: SPEECHKIT_SERVE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "speechkit-operator.recognizer.apiKeySecretName" . | quote }}
      key: {{ required "recognizer.apiKeySecret.key is required" $recognizer.apiKeySecret.key | quote }}
{{- end }}
{{- $names = concat $names (list "SPEECHKIT_SERVE_GRPC_PORT" "SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS") }}
- name: SPEECHKIT_SERVE_GRPC_PORT
  value: {{ ternary "8089" "0" (ne (toString $recognizer.streaming.enabled) "false") | quote }}
- name: SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS
  value: {{ int $recognizer.streaming.maxSessions | toString | quote }}
{{- $names = append $names "SPEECHKIT_SERVE_STATE_DIR" }}
- name: SPEECHKIT_SERVE_STATE_DIR
  value: {{ include "speechkit-operator.recognizer.stateDir" . | quote }}
{{- $settings := deepCopy ($recognizer.settings | default dict) }}
{{- if empty $settings.allowed_hosts }}
{{- /* Downloads are denied by default: allow where the operator's presigned URLs point. */}}
{{- $storage := .Values.settings.storage_endpoint | default "https://storage.yandexcloud.net" }}
{{- $_ := set $settings "allowed_hosts" (urlParse (toString $storage)).host }}
{{- end }}
{{- range $key, $value := $settings }}
{{- if not (regexMatch "^[a-z][a-z0-9_]*$" $key) }}
{{- fail (printf "recognizer.settings.%s: keys are ServiceSettings field names in snake_case" $key) }}
{{- end }}
{{- if has $key (list "host" "port" "workers" "queue_size" "retention_seconds" "api_keys" "state_dir" "grpc_port" "streaming_max_sessions") }}
{{- fail (printf "recognizer.settings.%s is set by the chart: use recognizer.workers, queueSize, retentionSeconds, apiKeySecret, persistence or streaming" $key) }}
{{- end }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{- $name := printf "SPEECHKIT_SERVE_%s" (upper $key) }}
{{- $names = append $names $name }}
- name: {{ $name }}
  value: {{ include "speechkit-operator.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- range $recognizer.extraEnv }}
{{- if has .name $names }}
{{- fail (printf "recognizer.extraEnv: %s is set by the chart; use the recognizer values instead" .name) }}
{{- end }}
{{- end }}
{{- with $recognizer.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The operator's metrics port: settings.metrics_port, else the operator's default (8081); 0: none.
*/}}
{{- define "speechkit-operator.metricsPort" -}}
{{- $port := .Values.settings.metrics_port }}
{{- if or (kindIs "invalid" $port) (eq (toString $port) "") }}8081{{ else }}{{ int $port }}{{ end }}
{{- end }}
