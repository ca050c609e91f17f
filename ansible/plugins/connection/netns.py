# A connection plugin for hosts that are Linux network namespaces of the controller's machine.
"""Run tasks inside a named Linux network namespace (``ip netns exec``) of the controller's machine.

Each inventory host is one network namespace: modules run as real processes in that namespace, see
its own interfaces, addresses and routes (so gathered facts differ per host), and files travel
through ``put_file``/``fetch_file`` as with any remote host. The file system is the machine's own,
so hosts sharing a machine keep their files apart with a per-host root prefix (``dae_py_root`` in the
dae_py role). Needs root (``ip netns exec`` does) and ``ip`` from iproute2.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: netns
    short_description: run tasks inside a network namespace of the controller's machine
    description:
        - Runs each command through C(ip netns exec NAME), so a host is a network namespace created
          beforehand with C(ip netns add NAME). Files are copied locally, as the local connection does.
    author: dae-py maintainers
    options:
        remote_addr:
            description: Name of the network namespace (as listed by C(ip netns list)).
            default: inventory_hostname
            type: str
            vars:
                - name: inventory_hostname
                - name: ansible_host
                - name: ansible_netns_name
        netns_ip_command:
            description: Path of the C(ip) command from iproute2.
            default: ip
            type: str
            vars:
                - name: ansible_netns_ip_command
        become_success_timeout:
            type: int
            default: 10
            description: Seconds to wait for become to succeed (as in the local connection).
            vars:
                - name: ansible_local_become_success_timeout
        become_strip_preamble:
            type: bool
            default: true
            description: Strip internal become output preceding command execution (as in the local connection).
            vars:
                - name: ansible_local_become_strip_preamble
    extends_documentation_fragment:
        - connection_pipelining
"""

import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.utils.display import Display

display = Display()


class Connection(LocalConnection):
    """Local execution wrapped in ``ip netns exec``."""

    transport = "netns"
    has_pipelining = True

    def _netns(self) -> str:
        return self.get_option("remote_addr")

    def _connect(self) -> Connection:
        if not self._connected:
            name = self._netns()
            ip = self.get_option("netns_ip_command")
            probe = subprocess.run([ip, "netns", "exec", name, "true"], capture_output=True, check=False)
            if probe.returncode != 0:
                raise AnsibleConnectionFailure(
                    f"cannot enter network namespace {name!r}: {probe.stderr.decode(errors='replace').strip()}"
                )
            display.vvv(f"ESTABLISH NETNS CONNECTION TO {name}", host=name)
        return super()._connect()

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        ip = self.get_option("netns_ip_command")
        wrapped = f"{shlex.quote(ip)} netns exec {shlex.quote(self._netns())} /bin/sh -c {shlex.quote(cmd)}"
        return super().exec_command(wrapped, in_data=in_data, sudoable=sudoable)
