"""The four resources in one place: names, printer columns and models.

The CRD generator, the kopf handlers and the RBAC builder all read this, so a kind is named once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from mlsec import API_VERSION, GROUP, VERSION
from mlsec.api.approval import ModelApproval, ModelApprovalSpec, ModelApprovalStatus
from mlsec.api.common import CustomResource
from mlsec.api.deployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from mlsec.api.ledger import PromotionLedger, PromotionLedgerSpec
from mlsec.api.policy import MLSecurityPolicy, MLSecurityPolicySpec, MLSecurityPolicyStatus

CATEGORY = "mlsec"


@dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column (additionalPrinterColumns)."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0  # 1: shown only with -o wide


def condition_column(name: str, condition_type: str, priority: int = 0) -> PrinterColumn:
    return PrinterColumn(
        name,
        f'.status.conditions[?(@.type=="{condition_type}")].status',
        description=f"Status of the {condition_type} condition.",
        priority=priority,
    )


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class ResourceInfo:
    """Names and models of one kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[CustomResource]
    spec_model: type[BaseModel]
    # None: no status, no status subresource (the PromotionLedger is all spec).
    status_model: type[BaseModel] | None
    printer_columns: tuple[PrinterColumn, ...]
    # Fields usable in field selectors (`kubectl get mla --field-selector spec.modelDeployment=x`).
    selectable_fields: tuple[str, ...] = ()
    categories: tuple[str, ...] = (CATEGORY,)
    group: str = GROUP
    version: str = VERSION

    @property
    def api_version(self) -> str:
        return API_VERSION

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def filename(self) -> str:
        return f"{self.group}_{self.plural}.yaml"


POLICY = ResourceInfo(
    kind="MLSecurityPolicy",
    plural="mlsecuritypolicies",
    singular="mlsecuritypolicy",
    short_names=("mlpol",),
    model=MLSecurityPolicy,
    spec_model=MLSecurityPolicySpec,
    status_model=MLSecurityPolicyStatus,
    printer_columns=(
        PrinterColumn("Enforcement", ".spec.enforcement", description="enforce or audit."),
        condition_column("Valid", "Valid"),
        condition_column("LDAP-Synced", "LDAPSynced"),
        PrinterColumn(
            "Users", ".status.ldap.users", "integer", "Users with a platform role.", priority=1
        ),
        PrinterColumn("Last-Change", ".status.ldap.lastChange", "date",
                      "Last LDAP sync that changed something.", priority=1),
        AGE,
    ),
)

DEPLOYMENT = ResourceInfo(
    kind="ModelDeployment",
    plural="modeldeployments",
    singular="modeldeployment",
    short_names=("mld",),
    model=ModelDeployment,
    spec_model=ModelDeploymentSpec,
    status_model=ModelDeploymentStatus,
    printer_columns=(
        PrinterColumn("Model", ".spec.model", description="Model name."),
        PrinterColumn("Version", ".spec.version", description="Requested model version."),
        PrinterColumn("Stage", ".spec.stage", description="Requested stage."),
        condition_column("Ready", "Ready"),
        PrinterColumn(
            "Class", ".spec.dataClassification", description="Data classification.", priority=1
        ),
        PrinterColumn("Owner", ".spec.owner", description="Model owner.", priority=1),
        condition_column("Approved", "PromotionApproved", priority=1),
        AGE,
    ),
    selectable_fields=(".spec.model", ".spec.stage"),
)

APPROVAL = ResourceInfo(
    kind="ModelApproval",
    plural="modelapprovals",
    singular="modelapproval",
    short_names=("mla",),
    model=ModelApproval,
    spec_model=ModelApprovalSpec,
    status_model=ModelApprovalStatus,
    printer_columns=(
        PrinterColumn("Model", ".spec.modelDeployment", description="ModelDeployment approved."),
        PrinterColumn("Version", ".spec.version", description="Model version approved."),
        PrinterColumn("Decision", ".spec.decision", description="approve or reject."),
        PrinterColumn("Approver", ".spec.approvedBy", description="Stamped at admission."),
        PrinterColumn("Counted", ".status.counted", "boolean", "Counts towards the rules."),
        AGE,
    ),
    selectable_fields=(".spec.modelDeployment",),
)

LEDGER = ResourceInfo(
    kind="PromotionLedger",
    plural="promotionledgers",
    singular="promotionledger",
    short_names=("mlledger",),
    model=PromotionLedger,
    spec_model=PromotionLedgerSpec,
    status_model=None,
    printer_columns=(
        PrinterColumn("Policy", ".spec.policy", description="MLSecurityPolicy in force."),
        PrinterColumn("Enforcement", ".spec.enforcement", description="enforce or audit."),
        PrinterColumn(
            "Blocked", ".spec.blocked", description="Why every promotion is refused, if so."
        ),
        AGE,
    ),
)

RESOURCES: tuple[ResourceInfo, ...] = (POLICY, DEPLOYMENT, APPROVAL, LEDGER)


def by_kind(kind: str) -> ResourceInfo:
    for info in RESOURCES:
        if info.kind == kind:
            return info
    raise KeyError(kind)
