"""mlsec-operator: security policy for machine-learning platforms on Kubernetes."""

__version__ = "0.1.0"

GROUP = "mlsec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
