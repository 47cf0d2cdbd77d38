"""Names, labels and selectors of the objects built for a ModelDeployment.

Every child is named after its ModelDeployment. A ModelDeployment may be called anything a custom
resource may (a DNS subdomain up to 253 characters, dots allowed), while a Service needs a DNS-1035
label (at most 63 characters, starting with a letter, no dots) and the instance label value at most
63 characters. :func:`base_name` returns the ModelDeployment's name when it already fits, which is
the normal case, and otherwise a deterministic cleaned name with a short hash of the original, so
that two ModelDeployments of one namespace never share children.
"""

from __future__ import annotations

import hashlib
import re

from mlsec.api import ModelDeployment

MANAGED_BY = "mlsec-operator"

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/)
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Ours: what the policy decisions were made on, for selectors, dashboards and audits.
LABEL_MODEL = "mlsec.io/model"
LABEL_STAGE = "mlsec.io/stage"
LABEL_DATA_CLASSIFICATION = "mlsec.io/data-classification"

ENVOY_FILTER_SUFFIX = "-ratelimit"

_MAX_LABEL = 63
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL_CHAR = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_LEN = 8


def base_name(md: ModelDeployment) -> str:
    """The name shared by the children: a DNS-1035 label of at most 63 characters.

    The ModelDeployment's own name when it is one already; otherwise the name lower-cased, with
    runs of other characters (dots) turned into ``-``, prefixed with ``m-`` when it does not start
    with a letter, cut to fit, and suffixed with ``-`` and 8 hex digits of its sha256.
    """
    name = md.metadata.name
    if not name:
        raise ValueError("ModelDeployment has no metadata.name")
    if len(name) <= _MAX_LABEL and _DNS1035.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LEN]
    cleaned = _NOT_DNS.sub("-", name.lower()).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = f"m-{cleaned}" if cleaned else "m"
    cleaned = cleaned[: _MAX_LABEL - _HASH_LEN - 1].rstrip("-")
    return f"{cleaned}-{digest}"


def namespace_of(md: ModelDeployment) -> str:
    namespace = md.metadata.namespace
    if not namespace:
        raise ValueError("ModelDeployment has no metadata.namespace")
    return namespace


def label_value(text: str) -> str:
    """``text`` as a valid label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends.

    Characters outside the set become ``-``; may return "" (a valid, empty label value).
    """
    cleaned = _NOT_LABEL_CHAR.sub("-", text)[:_MAX_LABEL]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def service_account_name(md: ModelDeployment) -> str:
    return base_name(md)


def deployment_name(md: ModelDeployment) -> str:
    return base_name(md)


def service_name(md: ModelDeployment) -> str:
    return base_name(md)


def envoy_filter_name(md: ModelDeployment) -> str:
    return base_name(md) + ENVOY_FILTER_SUFFIX


def service_host(md: ModelDeployment, cluster_domain: str = "cluster.local") -> str:
    """Fully qualified host name of the model's Service, as Istio's DestinationRule names it."""
    return f"{service_name(md)}.{namespace_of(md)}.svc.{cluster_domain}"


def selector_labels(md: ModelDeployment) -> dict[str, str]:
    """The labels selecting the model's pods.

    Only the instance label: a Deployment's selector is immutable, so nothing that can change over
    the model's life (version, stage) may be part of it.
    """
    return {LABEL_INSTANCE: base_name(md)}


def labels(md: ModelDeployment) -> dict[str, str]:
    """Labels of every child, and of the model's pods."""
    spec = md.spec
    return {
        LABEL_NAME: label_value(spec.model),
        LABEL_INSTANCE: base_name(md),
        LABEL_VERSION: label_value(spec.version),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL: label_value(spec.model),
        LABEL_STAGE: label_value(str(spec.stage)),
        LABEL_DATA_CLASSIFICATION: label_value(str(spec.data_classification)),
    }
