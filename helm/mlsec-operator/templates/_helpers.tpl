{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "mlsec-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name when it already contains the chart name
(`helm install mlsec-operator …` gives "mlsec-operator"), else "<release>-<chart>".
*/}}
{{- define "mlsec-operator.fullname" -}}
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

{{- define "mlsec-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release. */}}
{{- define "mlsec-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlsec-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mlsec-operator.labels" -}}
{{ include "mlsec-operator.selectorLabels" . }}
app.kubernetes.io/part-of: mlsec-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "mlsec-operator.chart" . }}
{{- end }}

{{- define "mlsec-operator.serviceAccountName" -}}
{{- required "serviceAccount.name is required" .Values.serviceAccount.name }}
{{- end }}

{{- define "mlsec-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "mlsec-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "mlsec-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlsec-operator.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "mlsec-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The webhook Service's DNS names, the subject of its certificate. */}}
{{- define "mlsec-operator.webhookDNSNames" -}}
{{- $svc := include "mlsec-operator.webhookServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* "true" when the MutatingAdmissionPolicy is rendered (see admissionPolicies.mutating). */}}
{{- define "mlsec-operator.mutatingPolicies" -}}
{{- $mode := toString .Values.admissionPolicies.mutating -}}
{{- if eq $mode "true" -}}
true
{{- else if eq $mode "auto" -}}
{{- if or (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy") (semverCompare ">=1.36.0-0" .Capabilities.KubeVersion.Version) -}}
true
{{- end -}}
{{- end -}}
{{- end }}

{{/* The certificate directory the webhook server reads tls.crt, tls.key and ca.crt from. */}}
{{- define "mlsec-operator.webhookCertDir" -}}
/etc/mlsec/webhook-tls
{{- end }}
