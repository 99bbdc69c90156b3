{{/*
Names, labels and the checks that span values. Every `fail` names the value to change.

Flow: .Values.models (each over modelDefaults) -> "gptoss.models" (checked; GPUs per pod and pods per replica
derived) -> rayservice.yaml (one GPU worker group per model) and "gptoss.serveConfig" (serveConfigV2, in the
cluster config's format: what `gptoss serve --print-serve-config FILE` prints for the same config).
*/}}

{{- define "gptoss.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix; 40 characters at most because KubeRay appends to it (RayCluster, pods, Services). */}}
{{- define "gptoss.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gptoss.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gptoss.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object the chart renders (not of pod templates: a changed chart version must not roll the
Ray cluster). */}}
{{- define "gptoss.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gptoss.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gptoss-serve
{{- end }}

{{- define "gptoss.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "gptoss.authEnabled" -}}
{{- if .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{/* The models, each merged over modelDefaults, checked, with derived fields: index, group (worker group and
label value), gpusPerPod, podsPerReplica, worldSize. Use: (include "gptoss.models" . | fromYaml).models */}}
{{- define "gptoss.models" -}}
{{- $models := list }}
{{- $seen := dict }}
{{- $mount := trimSuffix "/" .Values.modelVolume.mountPath }}
{{- range $i, $entry := .Values.models }}
{{- $m := mergeOverwrite (deepCopy $.Values.modelDefaults) (deepCopy $entry) }}
{{- $name := required (printf "models[%d].name is required: the model name clients send, e.g. gpt-oss-120b" $i) $m.name }}
{{- $at := printf "models[%d] (%s)" $i $name }}
{{- if hasKey $seen $name }}
{{- fail (printf "%s: the name is used by another model too; give each model its own name" $at) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- $path := required (printf "%s.path is required: the checkpoint directory inside the pods, under modelVolume.mountPath (e.g. %s/%s)" $at $mount $name) $m.path }}
{{- if not (hasPrefix (printf "%s/" $mount) $path) }}
{{- fail (printf "%s.path %s is not under modelVolume.mountPath %s, where the checkpoints are mounted; set path to %s/<directory> or change modelVolume.mountPath" $at $path $mount $mount) }}
{{- end }}
{{- $tp := int $m.parallel.tensorParallelSize }}
{{- $dp := int $m.parallel.dataParallelSize }}
{{- $world := mul $tp $dp }}
{{- $gpus := int $m.gpusPerPod }}
{{- if eq $gpus 0 }}
{{- $gpus = ternary $world $tp (eq $dp 1) }}
{{- end }}
{{- if or (mod $gpus $tp) (mod $world $gpus) }}
{{- $ep := ternary (printf "expert parallel over all %d" $world) "experts split" $m.parallel.enableExpertParallel }}
{{- $what := printf "%s: gpusPerPod %d does not fit parallel.tensorParallelSize %d x dataParallelSize %d = %d GPUs per replica (%s)" $at $gpus $tp $dp $world $ep }}
{{- $why := printf "a pod holds whole tensor-parallel groups (a multiple of %d GPUs) and a replica whole pods (a divisor of %d)" $tp $world }}
{{- $fix := printf "set gpusPerPod to %d, or the parallel sizes to match the GPUs of your nodes" (ternary $world $tp (eq $dp 1)) }}
{{- fail (printf "%s: %s; %s" $what $why $fix) }}
{{- end }}
{{- if gt (int $m.replicas.min) (int $m.replicas.max) }}
{{- fail (printf "%s: replicas.min %d is above replicas.max %d; raise max or lower min" $at (int $m.replicas.min) (int $m.replicas.max)) }}
{{- end }}
{{- range $key := list "name" "path" "dtype" "device" "num_gpus" "num_cpus" "parallel" "num_replicas" }}
{{- if hasKey $m.serve $key }}
{{- fail (printf "%s.serve.%s is written by the chart (from name, path, dtype, numCpus, parallel, gpusPerPod and replicas); remove it from serve" $at $key) }}
{{- end }}
{{- end }}
{{- if and (hasKey $m.serve "autoscaling") (or (hasKey (default dict $m.serve.autoscaling) "min_replicas") (hasKey (default dict $m.serve.autoscaling) "max_replicas")) }}
{{- fail (printf "%s.serve.autoscaling min_replicas/max_replicas come from replicas.min/max; set those instead" $at) }}
{{- end }}
{{- $_ := set $m "index" $i }}
{{- $_ := set $m "group" (regexReplaceAll "[^a-z0-9-]" (lower $name) "-" | trunc 30 | trimSuffix "-") }}
{{- $_ := set $m "gpusPerPod" $gpus }}
{{- $_ := set $m "worldSize" $world }}
{{- $_ := set $m "podsPerReplica" (div $world $gpus) }}
{{- $models = append $models $m }}
{{- end }}
{{- if not $models }}
{{- fail "models is empty: list at least one model (name and path)" }}
{{- end }}
{{- if and (not .Values.modelVolume.persistentVolumeClaim) (not .Values.modelVolume.hostPath) }}
{{- fail "modelVolume needs persistentVolumeClaim (a claim holding the checkpoints) or hostPath (a directory on every GPU node)" }}
{{- end }}
{{- toYaml (dict "models" $models) }}
{{- end }}

{{/* One model's entry in the cluster config (cluster/config.py ModelSpec fields). */}}
{{- define "gptoss.modelSpec" -}}
{{- $spec := deepCopy .serve }}
{{- $parallel := dict "tensor_parallel_size" (int .parallel.tensorParallelSize) "enable_expert_parallel" .parallel.enableExpertParallel }}
{{- if gt (int .parallel.dataParallelSize) 1 }}
{{- $_ := set $parallel "data_parallel_size" (int .parallel.dataParallelSize) }}
{{- $_ := set $parallel "distributed_executor_backend" (ternary "mp" "ray" (eq (int .podsPerReplica) 1)) }}
{{- end }}
{{- $_ := set $spec "name" .name }}
{{- $_ := set $spec "path" .path }}
{{- $_ := set $spec "dtype" .dtype }}
{{- $_ := set $spec "device" "cuda" }}
{{- $_ := set $spec "num_cpus" .numCpus }}
{{- /* a replica on one pod holds its GPUs; one spanning pods reserves them per rank through Ray's executor */}}
{{- $_ := set $spec "num_gpus" (ternary .gpusPerPod 0 (eq (int .podsPerReplica) 1)) }}
{{- $_ := set $spec "parallel" $parallel }}
{{- if eq (int .replicas.min) (int .replicas.max) }}
{{- $_ := set $spec "num_replicas" (int .replicas.min) }}
{{- else }}
{{- $_ := set $spec "autoscaling" (merge (dict "min_replicas" (int .replicas.min) "max_replicas" (int .replicas.max)) (default dict .serve.autoscaling)) }}
{{- end }}
{{- toYaml $spec }}
{{- end }}

{{/* serveConfigV2: Ray Serve's config shape with the whole application config inline as the builder's args,
as cluster.config.serve_config makes it. */}}
{{- define "gptoss.serveConfig" -}}
{{- $config := deepCopy .Values.config }}
{{- range $key := list "http" "auth" "grpc" "models" }}
{{- if hasKey $config $key }}
{{- fail (printf "config.%s is written by the chart (from api.*, auth.*, grpc.* and models); remove it from config (gateway settings go in grpc.settings)" $key) }}
{{- end }}
{{- end }}
{{- if .Values.grpc.enabled }}
{{- $grpc := deepCopy .Values.grpc.settings }}
{{- range $key := list "enabled" "host" "port" "replicas" "node_resource" "tls_cert_file" "tls_key_file" "tls_client_ca_file" }}
{{- if hasKey $grpc $key }}
{{- fail (printf "grpc.settings.%s is written by the chart (from grpc.enabled, grpc.port and grpc.tls); remove it" $key) }}
{{- end }}
{{- end }}
{{- $_ := merge $grpc (dict "enabled" true "host" "0.0.0.0" "port" (int .Values.grpc.port) "replicas" 1 "node_resource" (include "gptoss.grpcResource" .)) }}
{{- if .Values.grpc.tls.secretName }}
{{- $_ := merge $grpc (dict "tls_cert_file" "/etc/gptoss/grpc-tls/tls.crt" "tls_key_file" "/etc/gptoss/grpc-tls/tls.key") }}
{{- if .Values.grpc.tls.clientAuth }}
{{- $_ := set $grpc "tls_client_ca_file" "/etc/gptoss/grpc-tls/ca.crt" }}
{{- end }}
{{- else if .Values.grpc.tls.clientAuth }}
{{- fail "grpc.tls.clientAuth needs grpc.tls.secretName (mTLS needs the server's own certificate): set both or neither" }}
{{- end }}
{{- $_ := set $config "grpc" $grpc }}
{{- end }}
{{- if .Values.responseStore.dsnSecret }}
{{- $responses := deepCopy (default (dict) $config.responses) }}
{{- range $key := list "store_dsn" "store_dsn_env" "store_path" }}
{{- if hasKey $responses $key }}
{{- fail (printf "config.responses.%s is written by the chart (from responseStore.dsnSecret); remove it" $key) }}
{{- end }}
{{- end }}
{{- $_ := set $responses "store_dsn_env" "GPTOSS_STORE_DSN" }}
{{- $_ := set $config "responses" $responses }}
{{- end }}
{{- $_ := set $config "name" (default "gptoss" $config.name) }}
{{- $_ := set $config "http" (dict "host" "0.0.0.0" "port" (int .Values.api.port) "route_prefix" .Values.api.routePrefix) }}
{{- if include "gptoss.authEnabled" . }}
{{- $auth := dict "api_keys_file" (printf "/etc/gptoss/auth/%s" .Values.auth.apiKeysKey) }}
{{- if .Values.auth.metricsKeyKey }}
{{- $_ := set $auth "api_keys_env" "GPTOSS_METRICS_API_KEY" }}
{{- end }}
{{- $_ := set $config "auth" $auth }}
{{- end }}
{{- $specs := list }}
{{- range (include "gptoss.models" . | fromYaml).models }}
{{- $specs = append $specs (include "gptoss.modelSpec" . | fromYaml) }}
{{- end }}
{{- $_ := set $config "models" $specs }}
{{- $app := dict "name" $config.name "route_prefix" .Values.api.routePrefix "import_path" "cluster.app:build_app" "args" (dict "config" $config) }}
{{- toYaml (dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" (int .Values.api.port)) "applications" (list $app)) }}
{{- end }}

{{/* Security contexts: non-root, no privilege escalation, no capabilities, the runtime's seccomp profile. */}}
{{- define "gptoss.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "gptoss.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
capabilities:
  drop: [ALL]
{{- end }}

{{/* Probes on the raylet's health through Ray's dashboard agent, from inside the pod (never the dashboard). */}}
{{- define "gptoss.probes" -}}
{{- $check := list "bash" "-c" "wget -T 4 -q -O- http://localhost:52365/api/local_raylet_healthz | grep -q success" -}}
livenessProbe:
  exec:
    command: {{ toJson $check }}
  initialDelaySeconds: {{ .Values.probes.initialDelaySeconds }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.livenessFailureThreshold }}
readinessProbe:
  exec:
    command: {{ toJson $check }}
  initialDelaySeconds: {{ .Values.probes.initialDelaySeconds }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: 3
{{- end }}

{{/* Environment of every Ray container: the scrape key the API accepts besides the key file; the response
store's connection string (a front door may run on any pod). */}}
{{- define "gptoss.env" -}}
{{- if and (include "gptoss.authEnabled" .) .Values.auth.metricsKeyKey }}
- name: GPTOSS_METRICS_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.metricsKeyKey }}
{{- end }}
{{- if .Values.responseStore.dsnSecret }}
- name: GPTOSS_STORE_DSN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.responseStore.dsnSecret }}
      key: {{ .Values.responseStore.dsnKey }}
{{- end }}
{{- end }}

{{- define "gptoss.authVolumeMount" -}}
{{- if include "gptoss.authEnabled" . -}}
- name: api-keys
  mountPath: /etc/gptoss/auth
  readOnly: true
{{- end }}
{{- end }}

{{- define "gptoss.authVolume" -}}
{{- if include "gptoss.authEnabled" . -}}
- name: api-keys
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.apiKeysKey }}
        path: {{ .Values.auth.apiKeysKey }}
{{- end }}
{{- end }}

{{/* The API and metrics ports must not be one of Ray's own (they would open it to clients or scrapers). */}}
{{- define "gptoss.checkPorts" -}}
{{- $ray := dict "6379" "GCS" "8265" "the dashboard" "10001" "the Ray client" "52365" "the dashboard agent" }}
{{- range $key, $port := dict "api.port" .Values.api.port "metrics.rayPort" .Values.metrics.rayPort "grpc.port" .Values.grpc.port }}
{{- with get $ray (toString $port) }}
{{- fail (printf "%s %v is Ray's port for %s, which must stay closed to clients and scrapers; choose another (api.port 8000, metrics.rayPort 8080 by default)" $key $port .) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.api.port) (int .Values.metrics.rayPort) }}
{{- fail (printf "api.port and metrics.rayPort are both %v; give them different ports" .Values.api.port) }}
{{- end }}
{{- if and .Values.grpc.enabled (has (int .Values.grpc.port) (list (int .Values.api.port) (int .Values.metrics.rayPort))) }}
{{- fail (printf "grpc.port %v is also api.port or metrics.rayPort; give the gRPC gateway its own port" .Values.grpc.port) }}
{{- end }}
{{- end }}

{{/* The path /metrics is served under (the application's route prefix). */}}
{{- define "gptoss.metricsPath" -}}
{{- printf "%s/metrics" (trimSuffix "/" .Values.api.routePrefix) }}
{{- end }}

{{/* The Ray resource that pins the gRPC gateway to the head pod (which the gRPC Service selects). */}}
{{- define "gptoss.grpcResource" -}}
gptoss_grpc_gateway
{{- end }}

{{/* The gRPC gateway's TLS Secret, mounted on the head pod. */}}
{{- define "gptoss.grpcTlsVolumeMount" -}}
{{- if and .Values.grpc.enabled .Values.grpc.tls.secretName -}}
- name: grpc-tls
  mountPath: /etc/gptoss/grpc-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "gptoss.grpcTlsVolume" -}}
{{- if and .Values.grpc.enabled .Values.grpc.tls.secretName -}}
- name: grpc-tls
  secret:
    secretName: {{ .Values.grpc.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}
