"""The ModelDeployment API's names and values: group and kind, the labels, annotations and
ports the operator, the gateway and the local cluster agree on, defaults, and the patterns
the schema and the CEL rules share."""

from __future__ import annotations

GROUP = "hedge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)
CATEGORIES = ("hedge",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# The names the operator, the gateway and the local cluster agree on (docs/contracts.md).
FIELD_MANAGER = "hedge-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MD_LABEL = "hedge.dev/model-deployment"
COMPONENT_LABEL = "hedge.dev/component"
REVISION_LABEL = "hedge.dev/revision"
ENGINE_COMPONENT = "engine"
ENGINE_PORT = 8000
PORT_NAME = "http"

# Rollout commands, as annotations on the ModelDeployment whose value names the revision
# (`hedge.dev/promote: 5d41402abc`), so plain `kubectl annotate` and GitOps can give them and
# a stale one never touches another revision. promote/abort/retry act once per value (the
# handled values are kept in status.rollout.handledCommands); add anything after a slash to
# give the same command again (`5d41402abc/2`). pause holds while it names the revision
# being rolled out; removing it resumes.
PROMOTE_ANNOTATION = f"{GROUP}/promote"
ABORT_ANNOTATION = f"{GROUP}/abort"
RETRY_ANNOTATION = f"{GROUP}/retry"
PAUSE_ANNOTATION = f"{GROUP}/pause"

#: The upstream vLLM OpenAI-server image, pinned so a restart never changes the engine.
DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.32.0"
#: The ROCm build of the same vLLM release, for AMD Instinct profiles (amd.com/gpu): the
#: CUDA image cannot drive AMD GPUs, so those profiles swap it in while spec.engine.image
#: keeps the default.
ROCM_ENGINE_IMAGE = "vllm/vllm-openai-rocm:v0.32.0"

#: How long a request waits for a pod when the model is cold and no fallback takes it.
DEFAULT_COLD_START_HOLD_SECONDS = 120

#: Longest ModelDeployment name: it names the Service (a DNS-1035 label, 63 characters) and
#: the per-revision Deployments `<name>-<10-character revision>`.
MAX_NAME_LENGTH = 52

INT_OR_PERCENT_PATTERN = r"^[0-9]+%?$"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SERVED_NAME = r"^[A-Za-z0-9][-A-Za-z0-9._:/]*$"

# Source URI shapes, shared by the CEL rules and the Python parser (RE2 and `re` agree on
# these). CEL's matches() searches, so every pattern is anchored.
HF_SOURCE = r"^hf://[A-Za-z0-9][-A-Za-z0-9._]*(/[A-Za-z0-9][-A-Za-z0-9._]*)?$"
BUCKET_SOURCE = r"^(s3|gs)://[a-z0-9][-a-z0-9._]*[a-z0-9](/[^\s]*)?$"
PVC_SOURCE = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^\s]*)?$"
SOURCE_SCHEMES = ("hf", "s3", "gs", "pvc")
