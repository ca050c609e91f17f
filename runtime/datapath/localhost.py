"""The gateway's own traffic: which programs of a build go on the WAN interfaces and the cgroup.

`wan_programs` picks the WAN egress program (classifies what local processes send, bounces the
proxied packets back in) and the WAN ingress program (hands the bounced packets to the tproxy
listener); a build from before the bounce has no WAN ingress program, and then nothing is
attached to the WAN (warned): an egress program that bounced into an ingress with no program
would deliver nothing. `attach_pname_hooks` attaches a pname() build's cgroup hooks at the root
of the cgroup2 mount (or at `cgroup`, a directory that confines them to its processes).
See docs/local-routing.md.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from dae_py.contract.manifest import Attach, Manifest, ManifestError

from .cgroup import CgroupHooks, cgroup2_mount

log = logging.getLogger(__name__)

#: The runtime's `--cgroup` default: where the pname() hooks go when not at the mount's root.
CGROUP_ENV = "DAE_CGROUP"


def _program(obj: Any, manifest: Manifest, attach: Attach) -> int | None:
    try:
        name = manifest.program(attach).name
    except ManifestError:
        return None
    return obj.program_fd(name) if name in obj.program_names() else None


def wan_programs(obj: Any, manifest: Manifest) -> dict[str, int]:
    """Datapath.setup keyword arguments for the WAN side: {} when the build cannot do it."""
    egress = _program(obj, manifest, Attach.WAN_EGRESS)
    ingress = _program(obj, manifest, Attach.WAN_INGRESS)
    if egress is None or ingress is None:
        log.warning("this build has no WAN programs for the gateway's own traffic: wan_interface only sets "
                    "kernel parameters (recompile the config with this version)")
        return {}
    return {"egress_fd": egress, "wan_ingress_fd": ingress}


def attach_pname_hooks(obj: Any, manifest: Manifest,
                       cgroup: str | os.PathLike[str] | None = None) -> CgroupHooks | None:
    """Attach the build's cgroup hooks (None: the build has no pname() rules)."""
    specs = manifest.cgroup_programs()
    if not specs:
        return None
    path = cgroup or os.environ.get(CGROUP_ENV) or cgroup2_mount()
    hooks = CgroupHooks(path)
    hooks.attach((s.attach, obj.program_fd(s.name)) for s in specs)
    return hooks
