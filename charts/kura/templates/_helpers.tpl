{{/* The chart name, or nameOverride. */}}
{{- define "kura.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The resource name: <release>-kura, or just the release name when it already contains the
chart name. Kept to 52 characters so the StatefulSet's pod names (<name>-<ordinal>) and their
controller-revision-hash label stay within Kubernetes' 63-character limits.
*/}}
{{- define "kura.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kura.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kura.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kura.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kura.labels" -}}
helm.sh/chart: {{ include "kura.chart" . }}
{{ include "kura.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kura.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kura.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kura.headlessServiceName" -}}
{{- printf "%s-headless" (include "kura.fullname" .) -}}
{{- end -}}

{{/* The headless service's DNS name: the gossip seeds (KURA_DISCOVERY_DNS_NAME). */}}
{{- define "kura.discoveryDNSName" -}}
{{- printf "%s.%s.svc.%s" (include "kura.headlessServiceName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "kura.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* ceil(drainTimeoutMs / 1000): the drain deadline in whole seconds. */}}
{{- define "kura.drainSeconds" -}}
{{- div (add (int64 .Values.config.drainTimeoutMs) 999) 1000 -}}
{{- end -}}

{{/* The preStop sleep, 0 before Kubernetes 1.30 (no sleep action there). */}}
{{- define "kura.preStopSleepSeconds" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- int64 .Values.lifecycle.preStopSleepSeconds -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* The pod's grace period: preStop sleep + the drain deadline + a margin for process exit. */}}
{{- define "kura.terminationGracePeriodSeconds" -}}
{{- add (include "kura.preStopSleepSeconds" . | int64) (include "kura.drainSeconds" . | int64) (int64 .Values.lifecycle.terminationGraceExtraSeconds) -}}
{{- end -}}

{{- define "kura.extensionConfigMapName" -}}
{{- default (printf "%s-extension" (include "kura.fullname" .)) .Values.extension.existingConfigMap -}}
{{- end -}}

{{- define "kura.gossipKeySecretName" -}}
{{- default (printf "%s-gossip-key" (include "kura.fullname" .)) .Values.gossipKey.existingSecret -}}
{{- end -}}

{{- define "kura.gossipKeyEnabled" -}}
{{- if or .Values.gossipKey.existingSecret .Values.gossipKey.generate -}}true{{- end -}}
{{- end -}}

{{/* Rejects contradictory or incomplete values with a message naming the value to set. */}}
{{- define "kura.validate" -}}
{{- if lt (int64 .Values.config.drainTimeoutMs) 1 -}}
{{- fail "config.drainTimeoutMs must be a positive number of milliseconds" -}}
{{- end -}}
{{- if and .Values.extension.enabled (not .Values.extension.script) (not .Values.extension.existingConfigMap) -}}
{{- fail "extension.enabled needs extension.script (e.g. --set-file extension.script=policy.lua) or extension.existingConfigMap" -}}
{{- end -}}
{{- if and .Values.extension.script .Values.extension.existingConfigMap -}}
{{- fail "set extension.script or extension.existingConfigMap, not both" -}}
{{- end -}}
{{- if and .Values.gossipKey.existingSecret .Values.gossipKey.generate -}}
{{- fail "set gossipKey.existingSecret or gossipKey.generate, not both" -}}
{{- end -}}
{{- if and .Values.peerTls.enabled (not .Values.peerTls.secretName) -}}
{{- fail "peerTls.enabled needs peerTls.secretName (a Secret with the CA, certificate and key)" -}}
{{- end -}}
{{- if not (has .Values.podAntiAffinity (list "soft" "hard" "none")) -}}
{{- fail "podAntiAffinity must be soft, hard or none" -}}
{{- end -}}
{{- end -}}
