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
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) }}
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
  verbs: ["list", "watch", "patch"]
- apiGroups: ["speechkit.dev"]
  resources: ["transcriptionjobs/status"]
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
