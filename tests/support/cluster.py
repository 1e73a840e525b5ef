"""A Ray cluster of several nodes on this machine, every node on 127.0.0.1 and free ports.

``ray.cluster_utils.Cluster`` starts one raylet per node (the head also runs the GCS); nodes
carry custom resources so that deployments can be pinned to them. Ray binds to loopback here as
everywhere we start it (``bind_ray_to_loopback``, set before Ray is imported). Serve runs one
proxy, on the head node, so that removing a worker node never removes the HTTP entry point.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from serve_drift.tools.local_ray import LOOPBACK, bind_ray_to_loopback
from tests.support.serve import free_port

_NODE = {"node_ip_address": LOOPBACK, "include_dashboard": False}


@dataclass
class LocalCluster:
    cluster: Any
    http_port: int
    nodes: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, *, resources: dict[str, float], num_cpus: int = 1) -> Any:
        """A worker node named ``name`` (in this object only) carrying ``resources``."""
        node = self.cluster.add_node(**_NODE, num_cpus=num_cpus, resources=resources)
        self.nodes[name] = node
        return node

    def remove(self, name: str) -> None:
        """Kill the node's processes (raylet, workers): what a lost machine looks like."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def node_of(self, name: str) -> str:
        return str(self.nodes[name].node_id)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.http_port}{path}"


@contextlib.contextmanager
def local_cluster(*, head_cpus: int = 2) -> Iterator[LocalCluster]:
    """A head node (Serve's controller and proxy) connected to this process, Serve started."""
    bind_ray_to_loopback()
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**_NODE, "num_cpus": head_cpus})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    local = LocalCluster(cluster, free_port())
    try:
        serve.start(
            http_options={"host": LOOPBACK, "port": local.http_port}, proxy_location="HeadOnly"
        )
        yield local
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def alive_actors(class_name: str) -> list[dict[str, Any]]:
    """Live actors of a class (e.g. ``ServeReplica:app:Deployment``), from the GCS."""
    import ray

    actors = ray._private.state.actors().values()
    return [a for a in actors if a["ActorClassName"] == class_name and a["State"] == "ALIVE"]


def nodes_of(class_name: str) -> dict[str, str]:
    """Replica unique id (the end of the actor's name) -> node id, for live actors."""
    return {a["Name"].rsplit("#", 1)[-1]: a["Address"]["NodeID"] for a in alive_actors(class_name)}


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := predicate():
                return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
