#!/usr/bin/env bash
# Smoke test of the Helm chart on a throwaway kind cluster:
#   1. builds the image from the repository's Dockerfile and loads it into a new kind cluster;
#   2. installs charts/kura with 3 replicas and a gossip key Secret, waits until every pod is
#      ready and every node sees all 3 members;
#   3. writes N objects (Xcode CAS) through kura-0 and reads each back through the other pods;
#   4. rolls the StatefulSet (kubectl rollout restart + rollout status), then reads all N
#      objects through every pod: nothing acknowledged before the roll may be lost;
#   5. deletes the cluster (also on failure, after printing the pods' state and logs).
#
# Needs a Docker engine, kind, kubectl, helm and curl on PATH. It is not part of `go test`.
# Environment:
#   KURA_SMOKE_CLUSTER     kind cluster name (default kura-smoke; must not exist yet)
#   KURA_SMOKE_IMAGE       image to build and load (default kura:smoke)
#   KURA_SMOKE_SKIP_BUILD  1 = use an image already built under KURA_SMOKE_IMAGE
#   KURA_SMOKE_KIND_IMAGE  kind node image (default: kind's own default)
#   KURA_SMOKE_OBJECTS     objects written before the roll (default 50)
#   KURA_SMOKE_PORT_BASE   first local port of the port-forwards (default 14000)
#   KURA_SMOKE_KEEP        1 = keep the cluster afterwards, for a look around
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KURA_SMOKE_CLUSTER:-kura-smoke}"
IMAGE="${KURA_SMOKE_IMAGE:-kura:smoke}"
OBJECTS="${KURA_SMOKE_OBJECTS:-50}"
PORT_BASE="${KURA_SMOKE_PORT_BASE:-14000}"
NAMESPACE=kura-smoke
RELEASE=kura # the chart names the StatefulSet, and so the pods, after it: kura-0, kura-1, ...
REPLICAS=3
TENANT=default
CAS_NAMESPACE=smoke
TIMEOUT=300s

log() { printf 'kind_smoke: %s\n' "$*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}

WORK="$(mktemp -d)"
created_cluster=false
forward_pids=()

stop_port_forwards() {
	local pid
	for pid in "${forward_pids[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	forward_pids=()
}

diagnose() {
	log "state of namespace $NAMESPACE:"
	kubectl --namespace "$NAMESPACE" get statefulsets,pods,pvc,services -o wide || true
	kubectl --namespace "$NAMESPACE" describe statefulset "$RELEASE" || true
	kubectl --namespace "$NAMESPACE" get events --sort-by=.lastTimestamp || true
	local i
	for ((i = 0; i < REPLICAS; i++)); do
		log "logs of $RELEASE-$i:"
		kubectl --namespace "$NAMESPACE" logs "$RELEASE-$i" --tail=80 || true
		kubectl --namespace "$NAMESPACE" logs "$RELEASE-$i" --tail=40 --previous 2>/dev/null || true
	done
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	stop_port_forwards
	if ((status != 0)) && [[ $created_cluster == true ]]; then
		diagnose
	fi
	if [[ $created_cluster == true ]]; then
		if [[ ${KURA_SMOKE_KEEP:-0} == 1 ]]; then
			log "keeping kind cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
		else
			log "deleting kind cluster $CLUSTER"
			kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || log "could not delete kind cluster $CLUSTER"
		fi
	fi
	rm -rf "$WORK"
	if ((status == 0)); then
		log "PASS"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in docker kind kubectl helm curl; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info); kind needs one"
[[ $OBJECTS =~ ^[1-9][0-9]*$ ]] || die "KURA_SMOKE_OBJECTS must be a positive number, not $OBJECTS"

# --- image and cluster -----------------------------------------------------------------------
if [[ ${KURA_SMOKE_SKIP_BUILD:-0} == 1 ]]; then
	log "using the existing image $IMAGE"
else
	[[ -f $ROOT/Dockerfile ]] || die "no Dockerfile in $ROOT"
	log "docker build -t $IMAGE"
	docker build --tag "$IMAGE" --file "$ROOT/Dockerfile" "$ROOT"
fi

existing_clusters="$(kind get clusters 2>/dev/null || true)"
if grep -qx -- "$CLUSTER" <<<"$existing_clusters"; then
	die "a kind cluster named $CLUSTER exists already; delete it or set KURA_SMOKE_CLUSTER"
fi
# A kubeconfig of its own: the user's current context is left alone.
export KUBECONFIG="$WORK/kubeconfig"
kind_args=(create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s)
if [[ -n ${KURA_SMOKE_KIND_IMAGE:-} ]]; then
	kind_args+=(--image "$KURA_SMOKE_KIND_IMAGE")
fi
log "kind ${kind_args[*]}"
created_cluster=true # set first, so that a half-created cluster is deleted too
kind "${kind_args[@]}"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# --- install ---------------------------------------------------------------------------------
kubectl create namespace "$NAMESPACE"
kubectl --namespace "$NAMESPACE" create secret generic kura-gossip \
	--from-literal=gossip-key="$(head -c 32 /dev/urandom | base64 | tr -d '\n')"

# repository[:tag]; a colon before the last slash is a registry port, not a tag.
image_repository="$IMAGE"
image_tag=latest
if [[ ${IMAGE##*/} == *:* ]]; then
	image_repository="${IMAGE%:*}"
	image_tag="${IMAGE##*:}"
fi
log "helm install $RELEASE charts/kura ($REPLICAS replicas, image $image_repository:$image_tag)"
helm install "$RELEASE" "$ROOT/charts/kura" \
	--namespace "$NAMESPACE" \
	--set replicaCount="$REPLICAS" \
	--set image.repository="$image_repository" \
	--set image.tag="$image_tag" \
	--set image.pullPolicy=Never \
	--set gossipKey.existingSecret=kura-gossip \
	--set persistence.size=1Gi \
	--set resources.requests.cpu=100m \
	--set resources.requests.memory=512Mi \
	--set resources.limits.memory=512Mi \
	--wait --timeout "$TIMEOUT"
kubectl --namespace "$NAMESPACE" rollout status "statefulset/$RELEASE" --timeout "$TIMEOUT"

# --- helpers ---------------------------------------------------------------------------------
local_port() { echo $((PORT_BASE + $1)); }

# start_port_forwards forwards local port PORT_BASE+i to port 4000 of pod kura-i, for each pod,
# and waits until each answers /up.
start_port_forwards() {
	local i port deadline
	for ((i = 0; i < REPLICAS; i++)); do
		port="$(local_port "$i")"
		kubectl --namespace "$NAMESPACE" port-forward "pod/$RELEASE-$i" "$port:4000" \
			>"$WORK/port-forward-$i.log" 2>&1 &
		forward_pids+=("$!")
	done
	for ((i = 0; i < REPLICAS; i++)); do
		port="$(local_port "$i")"
		deadline=$((SECONDS + 60))
		until curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$port/up" 2>/dev/null; do
			((SECONDS < deadline)) || die "port-forward to $RELEASE-$i does not answer: $(cat "$WORK/port-forward-$i.log")"
			sleep 1
		done
	done
}

# node_count prints how many nodes (node URLs, self included) pod i's /up lists.
node_count() {
	curl -fsS --max-time 5 "http://127.0.0.1:$(local_port "$1")/up" 2>/dev/null |
		sed -n 's/.*"nodes":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | grep -c 'http' || true
}

wait_for_mesh() {
	local i deadline count
	for ((i = 0; i < REPLICAS; i++)); do
		deadline=$((SECONDS + 120))
		while count="$(node_count "$i")" && [[ $count != "$REPLICAS" ]]; do
			((SECONDS < deadline)) || die "$RELEASE-$i sees $count of $REPLICAS nodes after 120 s"
			sleep 2
		done
		curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$(local_port "$i")/ready" ||
			die "$RELEASE-$i: /ready is not 200"
	done
	log "every node sees all $REPLICAS nodes and is ready"
}

cas_url() { echo "http://127.0.0.1:$(local_port "$1")/api/cache/cas/$2?tenant_id=$TENANT&namespace_id=$CAS_NAMESPACE"; }
object_id() { echo "smoke-$RUN-$1"; }
object_body() { echo "kura smoke object $1 of run $RUN"; }

# put_object writes object n through pod i; only a 204 counts as acknowledged.
put_object() {
	local code
	code="$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' -X POST \
		-H 'Content-Type: application/octet-stream' --data-binary "$(object_body "$2")" \
		"$(cas_url "$1" "$(object_id "$2")")")" || code=000
	[[ $code == 204 ]] || die "write of object $2 through $RELEASE-$1 answered $code, want 204"
}

# get_object reads object n through pod i, retrying for up to 60 s (replication is eventual,
# though a miss is also read through from the peers).
get_object() {
	local deadline=$((SECONDS + 60)) body
	while true; do
		if body="$(curl -fsS --max-time 10 "$(cas_url "$1" "$(object_id "$2")")" 2>/dev/null)"; then
			[[ $body == "$(object_body "$2")" ]] || die "object $2 through $RELEASE-$1: wrong body '$body'"
			return 0
		fi
		((SECONDS < deadline)) || die "object $2 is not readable through $RELEASE-$1 after 60 s"
		sleep 1
	done
}

read_all_through_every_pod() {
	local i n
	for ((i = 0; i < REPLICAS; i++)); do
		for ((n = 1; n <= OBJECTS; n++)); do
			get_object "$i" "$n"
		done
	done
	log "all $OBJECTS objects read through each of the $REPLICAS pods ($1)"
}

# --- write through one pod, read through the others -----------------------------------------
RUN="$(date +%s)-$$"
start_port_forwards
wait_for_mesh

for ((n = 1; n <= OBJECTS; n++)); do
	put_object 0 "$n"
done
log "$OBJECTS objects acknowledged by $RELEASE-0"
read_all_through_every_pod "before the roll"

# --- roll the StatefulSet and check that nothing acknowledged was lost ----------------------
stop_port_forwards
revision() { kubectl --namespace "$NAMESPACE" get "statefulset/$RELEASE" -o "jsonpath={.status.$1}"; }
before="$(revision currentRevision)"
log "kubectl rollout restart statefulset/$RELEASE (revision $before)"
kubectl --namespace "$NAMESPACE" rollout restart "statefulset/$RELEASE"
kubectl --namespace "$NAMESPACE" rollout status "statefulset/$RELEASE" --timeout 600s
after="$(revision updateRevision)"
[[ -n $after && $after != "$before" ]] || die "the roll did not make a new revision ($before -> $after)"
# Every pod must have been replaced by one of the new revision.
pod_revisions="$(kubectl --namespace "$NAMESPACE" get pods -l "app.kubernetes.io/instance=$RELEASE" \
	-o 'jsonpath={range .items[*]}{.metadata.labels.controller-revision-hash}{"\n"}{end}')"
[[ $(grep -cx -- "$after" <<<"$pod_revisions") == "$REPLICAS" ]] ||
	die "after the roll, pod revisions are [$(tr '\n' ' ' <<<"$pod_revisions")], want $REPLICAS of $after"
log "all $REPLICAS pods replaced (revision $after)"

start_port_forwards
wait_for_mesh
read_all_through_every_pod "after the roll"
