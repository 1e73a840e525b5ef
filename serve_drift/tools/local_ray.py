"""Starting Ray for serve-drift's own tools (demo, benchmarks): on 127.0.0.1 only.

On Linux, Ray binds its node services (GCS, raylet, object manager, workers) to the machine's
routable address, reachable by anyone on the network. Ray itself runs single-node clusters on
macOS and Windows on the loopback address; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` asks for
the same here. Ray reads it once, when it is imported, and its processes inherit it: set it
before the first ``import ray`` (``bind_ray_to_loopback``), as this module does.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"

logger = logging.getLogger(__name__)


def bind_ray_to_loopback() -> None:
    """Make a Ray started by this process (and its children) listen on 127.0.0.1 only."""
    os.environ[LOOPBACK_SWITCH] = "0"
    if "ray" in sys.modules:  # imported already: its switch was read; set what it read
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(**init_options: Any) -> bool:
    """Start a local Ray on loopback unless one is connected; True if this call started it.

    ``init_options`` go to ``ray.init``. The dashboard is off unless asked for, and the Ray is
    a new one of this process's own (``address="local"``), never another cluster that happens to
    run on the machine, unless an address is given.
    """
    bind_ray_to_loopback()
    import ray

    if ray.is_initialized():
        return False
    ray.init(**{"address": "local", "include_dashboard": False, **init_options})
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        logger.warning("serve-drift: Ray is listening on %s, not on loopback", address)
    return True
