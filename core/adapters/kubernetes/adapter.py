"""``KubernetesCluster``: both cluster ports on one connection to the API server.

Why: the controller holds one object for the cluster; it implements
``core.ports.Cluster`` (``cluster.py``) and ``core.ports.NodeConfigurator``
(``node_ops.py``), which share the client, the options and the one error
translation (``api.py``, ``errors.py``).
"""

from __future__ import annotations

from .cluster import ClusterPort
from .node_ops import NodeOperations


class KubernetesCluster(ClusterPort, NodeOperations):
    """The ``Cluster`` and ``NodeConfigurator`` ports on Kubernetes.

    Build it on a ``kubernetes.client.Configuration`` or with ``connect()``
    (service account or kubeconfig); ``close()`` (or ``with``) closes the
    connection pools.
    """
