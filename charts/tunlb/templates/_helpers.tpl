{{/* Chart name (nameOverride). */}}
{{- define "tunlb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource-name prefix: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>".
*/}}
{{- define "tunlb.fullname" -}}
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

{{- define "tunlb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunlb.operator.fullname" -}}
{{- printf "%s-operator" (include "tunlb.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunlb.agent.fullname" -}}
{{- printf "%s-agent" (include "tunlb.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tunlb.labels" -}}
helm.sh/chart: {{ include "tunlb.chart" . }}
app.kubernetes.io/name: {{ include "tunlb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tunlb
{{- end }}

{{- define "tunlb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunlb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tunlb.operator.labels" -}}
{{ include "tunlb.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tunlb.operator.selectorLabels" -}}
{{ include "tunlb.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tunlb.agent.labels" -}}
{{ include "tunlb.labels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "tunlb.agent.selectorLabels" -}}
{{ include "tunlb.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "tunlb.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "tunlb.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tunlb.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "tunlb.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" or "repository@digest"; tag defaults to appVersion. Arg: (dict "image" X "root" $). */}}
{{- define "tunlb.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "tunlb.operator.logLevel" -}}
{{- default .Values.logLevel .Values.operator.logLevel }}
{{- end }}

{{- define "tunlb.agent.logLevel" -}}
{{- default .Values.logLevel .Values.agent.logLevel }}
{{- end }}
