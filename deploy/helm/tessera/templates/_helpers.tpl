{{- define "tessera.name" -}}tessera{{- end -}}

{{- define "tessera.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "tessera.labels" -}}
app.kubernetes.io/name: tessera
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "tessera.checkMode" -}}
{{- if not (has .Values.mode (list "dra" "device-plugin" "both")) -}}
{{- fail (printf "mode must be dra, device-plugin or both (got %q)" .Values.mode) -}}
{{- end -}}
{{- end -}}
