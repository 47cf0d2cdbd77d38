#!/usr/bin/env bash
# e2e on kind, for machines with Docker: build the operator image, create (or reuse) a kind cluster,
# load the image, install the Istio CRDs and the chart, then run the e2e scenarios against it.
#
#   e2e/kind/run.sh                 # everything; the cluster is kept for exploring
#   e2e/kind/run.sh -k scenario     # extra arguments go to pytest
#   DELETE_CLUSTER=1 e2e/kind/run.sh
#
# Needs: docker, kind, and the project's venv (make dev; it provides kubectl, and helm is built by
# `make build` or taken from PATH). Environment: CLUSTER (mlsec-e2e), IMAGE (mlsec-operator:e2e),
# KIND_NODE_IMAGE (kind's default), NAMESPACE (mlsec-system), DELETE_CLUSTER (0).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CLUSTER="${CLUSTER:-mlsec-e2e}"
IMAGE="${IMAGE:-mlsec-operator:e2e}"
NAMESPACE="${NAMESPACE:-mlsec-system}"
PY="${PYTHON:-$repo/.venv/bin/python}"
export PATH="$repo/.venv/bin:$PATH"

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e/kind: $tool is required" >&2; exit 2; }
done
HELM="${HELM:-$(command -v helm || "$PY" -c 'from mlsec.local import build; print(build.helm_bin())')}"

echo "--- building $IMAGE"
docker build -t "$IMAGE" "$repo"

if ! kind get clusters | grep -qx "$CLUSTER"; then
  echo "--- creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$here/cluster.yaml" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
kubeconfig="$(mktemp)"
trap 'rm -f "$kubeconfig"; if [ "${DELETE_CLUSTER:-0}" = 1 ]; then kind delete cluster --name "$CLUSTER"; fi' EXIT
kind get kubeconfig --name "$CLUSTER" > "$kubeconfig"
export KUBECONFIG="$kubeconfig"

echo "--- loading $IMAGE into $CLUSTER"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# The operator writes PeerAuthentication, DestinationRule, AuthorizationPolicy and EnvoyFilter:
# their CRDs must exist (the pinned istio.io/api CRDs, as in the local environment).
if ! kubectl get crd peerauthentications.security.istio.io >/dev/null 2>&1; then
  echo "--- installing the Istio CRDs"
  kubectl apply --server-side -f "$("$PY" -c 'from mlsec.local import build; print(build.istio_crds())')"
fi

echo "--- installing the chart"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite
"$HELM" upgrade --install mlsec-operator "$repo/helm/mlsec-operator" \
  --namespace "$NAMESPACE" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --wait --timeout 5m

echo "--- e2e scenarios"
cd "$repo"
"$PY" -m pytest -p no:cacheprovider -q e2e --target kubeconfig --kubeconfig "$kubeconfig" \
  --operator-namespace "$NAMESPACE" "$@"
