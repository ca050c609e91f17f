"""Throw-away system users for danted's username/password method.

danted's `socksmethod: username` checks the system password database, so a SOCKS5 test with
credentials needs a real user. Each one carries a GECOS tag naming the lab run that owns it, so
`cleanup_stale` can find and delete users of a crashed run and nothing else.
"""
from __future__ import annotations

import logging
import pwd
import subprocess

log = logging.getLogger(__name__)

GECOS_TAG = "dae-lab"


def owner_of(entry: pwd.struct_passwd) -> str | None:
    """The lab run id in a user's GECOS tag, or None for users the lab did not create."""
    parts = entry.pw_gecos.split()
    if len(parts) == 2 and parts[0] == GECOS_TAG:
        return parts[1]
    return None


def create_user(name: str, password: str | None, owner: str) -> None:
    """Create a login-less system user (with a password unless None: a service user needs
    none); refuse to touch an existing user."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        raise ValueError(f"user {name!r} already exists; the lab only uses users it creates")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", "--comment", f"{GECOS_TAG} {owner}", name],
        check=True, capture_output=True, text=True,
    )
    if password is not None:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", check=True,
                       capture_output=True, text=True)
    log.debug("created user %s for %s", name, owner)


def remove_user(name: str) -> None:
    """Delete a lab user (and its group); a user already gone is fine."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    if owner_of(entry) is None:
        log.error("refusing to delete %s: not a lab user", name)
        return
    res = subprocess.run(["userdel", name], capture_output=True, text=True)
    if res.returncode != 0:
        log.error("userdel %s failed: %s", name, res.stderr.strip())


def users_of(owner_prefix: str) -> list[tuple[str, str]]:
    """(user, owner run id) of every lab user whose owner starts with `owner_prefix`."""
    out = []
    for entry in pwd.getpwall():
        owner = owner_of(entry)
        if owner is not None and owner.startswith(owner_prefix):
            out.append((entry.pw_name, owner))
    return out
