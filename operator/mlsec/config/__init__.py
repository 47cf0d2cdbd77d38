"""Install-time configuration generated from code: the operator's own RBAC (kubebuilder's config/)."""
