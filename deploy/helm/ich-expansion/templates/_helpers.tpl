{{- define "ich.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "ich.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "ich.selector" -}}
app.kubernetes.io/name: {{ include "ich.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "ich.labels" -}}
{{ include "ich.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "ich.apiKeysSecret" -}}{{ .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "ich.fullname" .)) }}{{- end -}}
{{- define "ich.redisName" -}}{{ printf "%s-redis" (include "ich.fullname" .) | trunc 63 | trimSuffix "-" }}{{- end -}}
