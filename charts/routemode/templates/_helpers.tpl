{{/*
The labels every object gets on top of its own app.kubernetes.io/name and
component: config/default's part-of (kustomize's labels: transformer) and
Helm's usual four. Pod templates and selectors keep config/default's labels
only, so switching between the two install paths never orphans pods.
*/}}
{{- define "routemode.labels" -}}
app.kubernetes.io/part-of: routemode
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* An image reference from {repository, tag}, the tag defaulting to appVersion. */}}
{{- define "routemode.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{/*
The agent's service account as the API server names it in requests: the
admission policy matches it, so it follows the release's namespace.
*/}}
{{- define "routemode.agentUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:routemode-agent
{{- end }}
