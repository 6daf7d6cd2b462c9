{{/* The chart's name: "meshrev" unless nameOverride. */}}
{{- define "meshrev.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object's name: fullnameOverride, else the release name when it contains
the chart's name, else "<release>-<name>". Release "meshrev" gives the names of manifests/.
*/}}
{{- define "meshrev.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "meshrev.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What selects this release's pods: the name and the release. */}}
{{- define "meshrev.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshrev.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels only the chart adds (manifests/ has none of these). */}}
{{- define "meshrev.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The labels of the objects that carry app.kubernetes.io/name in manifests/. */}}
{{- define "meshrev.labels" -}}
app.kubernetes.io/name: {{ include "meshrev.name" . }}
{{ include "meshrev.chartLabels" . }}
{{- end -}}

{{- define "meshrev.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "meshrev.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{/* The cert-manager Certificate that serves the webhook. */}}
{{- define "meshrev.servingCertificate" -}}
{{- printf "%s-serving" (include "meshrev.fullname" .) -}}
{{- end -}}

{{/* The caBundle for both webhook configurations ("" until one is given). */}}
{{- define "meshrev.caBundle" -}}
{{- if .Values.tls.ca -}}
{{- .Values.tls.ca | b64enc -}}
{{- else -}}
{{- .Values.tls.caBundle -}}
{{- end -}}
{{- end -}}

{{/* A webhook's clientConfig for `path`: the Service, or webhook.url. Call with (list . "/inject"). */}}
{{- define "meshrev.clientConfig" -}}
{{- $ := index . 0 -}}
{{- $path := index . 1 -}}
clientConfig:
{{- if $.Values.webhook.url }}
  url: {{ printf "%s%s" (trimSuffix "/" $.Values.webhook.url) $path | quote }}
{{- else }}
  service: {name: {{ include "meshrev.fullname" $ }}, namespace: {{ $.Release.Namespace }}, path: {{ $path }}, port: 443}
{{- end }}
{{- if ne $.Values.tls.source "certManager" }}
  caBundle: {{ include "meshrev.caBundle" $ | quote }}
{{- end }}
{{- end -}}
