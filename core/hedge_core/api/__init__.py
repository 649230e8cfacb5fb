"""The Hedge API (hedge.dev/v1alpha1): ModelDeployment and ClientPolicy, typed spec and
status, parsing, and the CRDs.

The dataclasses are the one source of truth: the CRD's structural schema (descriptions,
defaults, bounds, CEL rules) is generated from them, and `parse` validates a spec in Python
with the same rules, so objects that never met the API server (unit tests, clusters without
the CRD's CEL) are judged alike. `python -m hedge_core.api` prints the CRD.

- `constants`: group, kind, labels, annotations, ports, defaults, shared patterns
- `schema`: the machinery (`prop`, `Rule`, `SpecError`, `object_schema`, `parse`, `to_json`)
- `spec`: the spec dataclasses and their rules
- `status`: the status dataclasses
- `resource`: `ModelDeployment` (identity plus parsed spec), the rules on the whole object
- `clientpolicy`: ClientPolicy, a tenant's client keys and limits (spec, status, the
  `ClientPolicy` readers use, `key_name`)
- `definition`: the CustomResourceDefinitions assembled from the above (`crd`, `crd_yaml`;
  not named crd.py, which the function `crd` re-exported here would shadow)

Everything is re-exported here: `from hedge_core.api import X` is the way in.
"""

from hedge_core.api.clientpolicy import (
    CLIENT_POLICY_KIND,
    CLIENT_POLICY_PLURAL,
    CLIENT_POLICY_SHORT_NAMES,
    CLIENT_POLICY_SINGULAR,
    LIMIT_KINDS,
    ClientKeyRef,
    ClientKeySpec,
    ClientPolicy,
    ClientPolicySpec,
    ClientPolicyStatus,
    ClientPolicyUsage,
    ClientSecretRef,
    FallbackAllowance,
    Limits,
    ModelLimits,
    Priority,
    key_name,
)
from hedge_core.api.constants import (
    ABORT_ANNOTATION,
    API_VERSION,
    BUCKET_SOURCE,
    CATEGORIES,
    COMPONENT_LABEL,
    CRD_NAME,
    DEFAULT_COLD_START_HOLD_SECONDS,
    DEFAULT_ENGINE_IMAGE,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENGINE_COMPONENT,
    ENGINE_PORT,
    ENV_NAME,
    FIELD_MANAGER,
    GROUP,
    HF_SOURCE,
    INT_OR_PERCENT_PATTERN,
    KIND,
    MANAGED_BY_LABEL,
    MAX_NAME_LENGTH,
    MD_LABEL,
    PART_OF_LABEL,
    PAUSE_ANNOTATION,
    PLURAL,
    PORT_NAME,
    PROMOTE_ANNOTATION,
    PVC_SOURCE,
    QUANTITY_PATTERN,
    RETRY_ANNOTATION,
    REVISION_LABEL,
    SECRET_KEY,
    SERVED_NAME,
    SHORT_NAMES,
    SINGULAR,
    SOURCE_SCHEMES,
    VERSION,
)
from hedge_core.api.definition import (
    CLIENT_POLICY_PRINTER_COLUMNS,
    CRD_FILES,
    CRD_HEADER,
    PRINTER_COLUMNS,
    client_policy_crd,
    client_policy_crd_yaml,
    crd,
    crd_yaml,
)
from hedge_core.api.resource import ROOT_RULES, ModelDeployment, check_name
from hedge_core.api.schema import (
    IntOrPercent,
    Quantity,
    Rule,
    SpecError,
    json_name,
    object_schema,
    parse,
    prop,
    to_json,
)
from hedge_core.api.schema import (
    T as T,
)
from hedge_core.api.schema import (
    _default_json as _default_json,
)
from hedge_core.api.schema import (
    _hints as _hints,
)
from hedge_core.api.schema import (
    _is_dataclass_type as _is_dataclass_type,
)
from hedge_core.api.schema import (
    _Parser as _Parser,
)
from hedge_core.api.schema import (
    _type_schema as _type_schema,
)
from hedge_core.api.schema import (
    _unwrap_optional as _unwrap_optional,
)
from hedge_core.api.spec import (
    AdapterSpec,
    AnalysisSpec,
    AutoscalingSpec,
    CacheSpec,
    CredentialsRef,
    Dtype,
    EngineSpec,
    EnvVar,
    FallbackBudget,
    FallbackProvider,
    FallbackSpec,
    ModelDeploymentSpec,
    ModelSpec,
    ProviderType,
    QuantizationMethod,
    ResourcesSpec,
    RolloutSpec,
    RolloutStep,
    SecretKeyRef,
    ServingSpec,
)
from hedge_core.api.spec import (
    _cel_string as _cel_string,
)
from hedge_core.api.spec import (
    _gpus_or_one as _gpus_or_one,
)
from hedge_core.api.spec import (
    _matches as _matches,
)
from hedge_core.api.spec import (
    _source_rules as _source_rules,
)
from hedge_core.api.status import (
    AnalysisStatus,
    AutoscalingStatus,
    Condition,
    FallbackBudgetStatus,
    ModelDeploymentStatus,
    RevisionMetrics,
    RolloutStatus,
)
from hedge_core.clock import rfc3339, unix_seconds

__all__ = [
    "ABORT_ANNOTATION",
    "API_VERSION",
    "BUCKET_SOURCE",
    "CATEGORIES",
    "CLIENT_POLICY_KIND",
    "CLIENT_POLICY_PLURAL",
    "CLIENT_POLICY_PRINTER_COLUMNS",
    "CLIENT_POLICY_SHORT_NAMES",
    "CLIENT_POLICY_SINGULAR",
    "COMPONENT_LABEL",
    "CRD_FILES",
    "CRD_HEADER",
    "CRD_NAME",
    "DEFAULT_COLD_START_HOLD_SECONDS",
    "DEFAULT_ENGINE_IMAGE",
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "ENGINE_COMPONENT",
    "ENGINE_PORT",
    "ENV_NAME",
    "FIELD_MANAGER",
    "GROUP",
    "HF_SOURCE",
    "INT_OR_PERCENT_PATTERN",
    "KIND",
    "LIMIT_KINDS",
    "MANAGED_BY_LABEL",
    "MAX_NAME_LENGTH",
    "MD_LABEL",
    "PART_OF_LABEL",
    "PAUSE_ANNOTATION",
    "PLURAL",
    "PORT_NAME",
    "PRINTER_COLUMNS",
    "PROMOTE_ANNOTATION",
    "PVC_SOURCE",
    "QUANTITY_PATTERN",
    "RETRY_ANNOTATION",
    "REVISION_LABEL",
    "ROOT_RULES",
    "SECRET_KEY",
    "SERVED_NAME",
    "SHORT_NAMES",
    "SINGULAR",
    "SOURCE_SCHEMES",
    "VERSION",
    "AdapterSpec",
    "AnalysisSpec",
    "AnalysisStatus",
    "AutoscalingSpec",
    "AutoscalingStatus",
    "CacheSpec",
    "ClientKeyRef",
    "ClientKeySpec",
    "ClientPolicy",
    "ClientPolicySpec",
    "ClientPolicyStatus",
    "ClientPolicyUsage",
    "ClientSecretRef",
    "Condition",
    "CredentialsRef",
    "Dtype",
    "EngineSpec",
    "EnvVar",
    "FallbackAllowance",
    "FallbackBudget",
    "FallbackBudgetStatus",
    "FallbackProvider",
    "FallbackSpec",
    "IntOrPercent",
    "Limits",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelLimits",
    "ModelSpec",
    "Priority",
    "ProviderType",
    "Quantity",
    "QuantizationMethod",
    "ResourcesSpec",
    "RevisionMetrics",
    "RolloutSpec",
    "RolloutStatus",
    "RolloutStep",
    "Rule",
    "SecretKeyRef",
    "ServingSpec",
    "SpecError",
    "check_name",
    "client_policy_crd",
    "client_policy_crd_yaml",
    "crd",
    "crd_yaml",
    "json_name",
    "key_name",
    "object_schema",
    "parse",
    "prop",
    "rfc3339",
    "to_json",
    "unix_seconds",
]
