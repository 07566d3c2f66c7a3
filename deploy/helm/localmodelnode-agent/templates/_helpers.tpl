{{/* Labels on every object; the DaemonSet's selector stays KServe's. */}}
{{- define "localmodelnode-agent.labels" -}}
app.kubernetes.io/name: localmodelnode-agent
app.kubernetes.io/part-of: modelpull
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "localmodelnode-agent.selector" -}}
control-plane: kserve-localmodelnode-agent
controller-tools.k8s.io: "1.0"
{{- end }}
