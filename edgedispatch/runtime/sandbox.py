"""What a tenant's process sees, who it runs as, and what it is told.

Every local process edgedispatch starts for a tenant (a native pool's
zygote, a command job, an agent-server instance) runs tenant code, and is
treated as hostile.  ``Sandbox.argv`` wraps its program in what the host
offers, outermost first:

1. **a cell** (``runtime.cgroups``): a tiny shell writes its own pid into
   the cell and ``exec``s the rest, so the program and all it ever starts
   are in the cell before any of it runs: memory and process limits on the
   whole tree, and a kill that reaches all of it;
2. **bubblewrap** (``bwrap``), as root: a mount namespace that shows
   read-only the system, the Python installation, the agent's own
   directory and what the operator bound, a private ``/tmp``, the tenant's
   own directory read-write, and nothing else (not the server's
   configuration, its data directory, or another tenant's directory); a
   PID namespace, so the process sees and can signal only its own tree,
   and the whole tree dies when the server does (``--die-with-parent``);
3. **the tenant's uid** (``setpriv``, inside the sandbox, as the binds
   need root to be made): a uid of its own per tenant, no capabilities, no
   new privileges, so it cannot signal the server or another tenant's
   processes, or read their files.

Without a cell or bubblewrap, ``runtime.contain`` starts the program under
``runtime/reaper.py``, a subreaper that keeps the tree below it instead.

The environment is built, not inherited: PATH, HOME (the tenant's
directory), TMPDIR, the locale, and what the definition and the job add.
Nothing of the server's environment (its keys, its tokens) is passed on.

What the host lacks is logged at start-up and said in ``doctor``-style
``describe()`` lines; nothing is pretended.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import edgedispatch
from edgedispatch.runtime.cgroups import Cell
from edgedispatch.runtime.process import base_env

#: Joins the cell whose procs files come before "--", then runs the rest.
#: ``$$`` is the shell's pid, which ``exec`` hands on to the program.
JOIN = 'p=$$; while [ "$1" != -- ]; do echo $p > "$1" || exit 125; shift; done; shift; exec "$@"'

#: System paths shown read-only, when they exist (a symlink stays a symlink).
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = (
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/ld.so.cache",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
)


class Host:
    """What this host offers for containment, probed once at start-up."""

    def __init__(self, *, bwrap: str | None, setpriv: str | None, root: bool) -> None:
        self.bwrap = bwrap
        self.setpriv = setpriv
        self.root = root

    @classmethod
    def probe(cls) -> Host:
        bwrap = shutil.which("bwrap")
        setpriv = shutil.which("setpriv")
        if bwrap is not None and not _runs(
            [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--", "true"]
        ):
            bwrap = None  # installed, but cannot make namespaces here
        return cls(bwrap=bwrap, setpriv=setpriv, root=os.geteuid() == 0)

    @property
    def uids(self) -> bool:
        """A uid per tenant needs root to switch and bubblewrap to show the
        Python installation to that uid (it may live under a private home)."""
        return self.root and self.bwrap is not None and self.setpriv is not None


def _runs(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Sandbox:
    """Builds contained argvs and environments, per tenant.

    :param tenants: every tenant's name (the default tenant is ""), in
        config order: tenant i runs as uid ``uid_base + i``.
    :param tenant_root: where each tenant's own directory is made.
    :param hidden: paths no tenant may see even under a bound directory
        (the configuration file, the data directory).
    """

    def __init__(
        self,
        host: Host,
        *,
        enabled: bool,
        tenants: Iterable[str],
        uid_base: int,
        tenant_root: Path,
        hidden: Iterable[str] = (),
    ) -> None:
        self.host = host
        self.fs_view = enabled and host.bwrap is not None
        self.own_uids = enabled and host.uids
        self._uids = {t: uid_base + i for i, t in enumerate(dict.fromkeys(tenants))}
        self._root = tenant_root
        self._hidden = [os.path.realpath(p) for p in hidden if p]
        self._python_paths = _python_paths()

    def uid(self, tenant: str) -> int | None:
        """The uid the tenant's processes run as, or None (the server's)."""
        return self._uids.get(tenant) if self.own_uids else None

    def tenant_dir(self, tenant: str) -> Path:
        """The tenant's own directory (read-write for it, and only it),
        made on first use."""
        path = self._root / (tenant or "_default")
        if not path.exists():
            path.mkdir(parents=True, mode=0o700)
        uid = self.uid(tenant)
        if uid is not None and path.stat().st_uid != uid:
            os.chown(path, uid, uid)
        return path

    def env(self, tenant: str, extra: Mapping[str, str]) -> dict[str, str]:
        """The environment of a tenant's process: built, never inherited
        (``base_env``), with HOME the tenant's own directory."""
        return base_env(extra, home=str(self.tenant_dir(tenant)))

    def argv(
        self,
        program: list[str],
        *,
        tenant: str,
        cwd: str = "",
        read_only: Iterable[str] = (),
        read_write: Iterable[str] = (),
        cell: Cell | None = None,
    ) -> list[str]:
        """``program`` wrapped in the cell, the filesystem view and the
        tenant's uid (each when available).  ``cwd`` is where it runs; the
        agent's directory (``cwd``) and ``read_only`` paths are shown
        read-only, ``read_write`` ones read-write, the tenant's directory
        always."""
        out: list[str] = []
        if cell is not None:
            out += ["/bin/sh", "-c", JOIN, "edgedispatch-join", *cell.procs_files(), "--"]
        home = str(self.tenant_dir(tenant))
        if self.fs_view:
            assert self.host.bwrap is not None
            out += self._bwrap(self.host.bwrap, cwd or home, [cwd, *read_only], [home, *read_write])
        uid = self.uid(tenant)
        if uid is not None:
            assert self.host.setpriv is not None
            out += [
                self.host.setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return out + program

    def _bwrap(self, bwrap: str, cwd: str, ro: list[str], rw: list[str]) -> list[str]:
        args = [
            bwrap,
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            # No UTS namespace: the sandbox sets no hostname, and a tenant
            # without capabilities cannot change the host's (the systemd
            # unit forbids making one).
            "--unshare-cgroup-try",
        ]
        bound: list[str] = ["/usr"]  # mount points, whose insides exist
        masked: list[str] = []  # hidden under an empty tmpfs: nothing inside
        dirs: set[str] = {"/"}  # directories made in the new root

        def under(path: str, tops: list[str]) -> bool:
            return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)

        def inside(path: str) -> bool:
            return under(path, bound) and not under(path, masked)

        def parents(path: str) -> None:
            # bwrap makes a bind's missing parents 0700: the tenant's uid
            # could not walk through them.  Make them 0755 first.
            missing: list[str] = []
            for parent in map(str, Path(path).parents):
                if parent in dirs or inside(parent):
                    break
                missing.append(parent)
            for name in reversed(missing):
                args.extend(["--perms", "0755", "--dir", name])
                dirs.add(name)

        def bind(path: str, how: str) -> None:
            parents(path)
            args.extend([how, path, path])
            bound.append(path)

        args += ["--ro-bind", "/usr", "/usr"]
        for path in SYSTEM[1:]:
            if os.path.islink(path):
                args.extend(["--symlink", os.readlink(path), path])
            elif os.path.isdir(path):
                bind(path, "--ro-bind")
        for path in ETC:
            if os.path.exists(path):
                bind(path, "--ro-bind")
        # Before any bind: a mount over a parent hides what was bound inside
        # it earlier.  (A tmpfs is empty: what is bound under /tmp needs its
        # parents made.)
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        # Parents before children, for the same reason; a path inside one
        # already shown is shown with it.
        for path in _outermost([*self._python_paths, *ro]):
            if not inside(path):
                bind(path, "--ro-bind")
        writable = _outermost(rw)
        for path in writable:
            bind(path, "--bind")
        # What no tenant may read, even where a directory it sees holds it:
        # masked after every bind, so that no bind shows it again ...
        for path in self._hidden:
            if inside(path):
                if os.path.isdir(path):
                    args += ["--tmpfs", path]
                    masked.append(path)
                else:
                    args += ["--ro-bind", "/dev/null", path]
        # ... but for the tenant's own directory, which may live in the data
        # directory: it is bound again, on top of the mask (any read-write
        # path, including those inside another).
        for path in sorted({os.path.realpath(p) for p in rw if p and os.path.exists(p)}):
            if under(path, masked):
                bind(path, "--bind")
        return args + ["--chdir", os.path.realpath(cwd) if cwd else "/tmp", "--"]


def _outermost(paths: Iterable[str]) -> list[str]:
    """The existing ``paths``, resolved, without those inside another, in
    sorted order (a parent before its children)."""
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)})
    out: list[str] = []
    for path in real:
        if not any(path == o or path.startswith(o.rstrip("/") + "/") for o in out):
            out.append(path)
    return out


def _python_paths() -> list[str]:
    """What a Python program of ours needs to see: the interpreter's
    installation, the virtual environment, and edgedispatch itself (an
    editable install lives outside both)."""
    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))]
    package = os.path.dirname(os.path.dirname(os.path.realpath(edgedispatch.__file__)))
    return list(dict.fromkeys([*paths, package]))
