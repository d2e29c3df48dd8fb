"""The cluster ports on a real Kubernetes cluster, through the official ``kubernetes`` client.

Why: in production the controller binds placement decisions and changes MPS
configuration on a real cluster (SPEC §3.3 step 8, §4.1). This package is the
only code that imports ``kubernetes``; a ``V1Node``, ``V1Pod`` or
``ApiException`` never leaves it: callers get ``core.model`` values, the
``core.ports`` dataclasses and the frozen dataclasses of ``nodes``.

Modules, along the seams:
- ``errors``: the adapter's error types and the one ``translate`` of client errors;
- ``options``: ``KubeOptions`` and ``options_from_env``;
- ``nodes``: reading ``V1Node``/``V1Pod`` into the project's values (no calls);
- ``api``: the client, paging, watches and conflict retries every call goes through;
- ``cluster``: the ``Cluster`` port (nodes, bind, pod phases, waiting for pods);
- ``node_ops``: the ``NodeConfigurator`` port (cordon, drain, device-plugin configs);
- ``adapter``: ``KubernetesCluster``, both ports on one connection.

Every call carries the RBAC verb and resource it needs; the verbs, and nothing
more, are granted in ``deploy/k8s/rbac.yaml``, and a test checks the two agree.
"""

from __future__ import annotations

from .adapter import KubernetesCluster
from .errors import ConflictError, InvalidObjectError, NodeNotFoundError
from .nodes import ManagedPod, NodeStatus, PodOutcome
from .options import KubeOptions, options_from_env, options_from_settings

__all__ = [
    "ConflictError",
    "InvalidObjectError",
    "KubeOptions",
    "KubernetesCluster",
    "ManagedPod",
    "NodeNotFoundError",
    "NodeStatus",
    "PodOutcome",
    "options_from_env",
    "options_from_settings",
]
