"""The containment's parts on their own: the sandbox's command line (what
is shown, masked and bound, in which order), the environment, and the
cgroup cells (kill-all, a dead run's leftovers).  The functional suite
(tests/functional/test_containment.py) attacks them with tenant code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edgedispatch.config import Config, SandboxConfig
from edgedispatch.runtime import cgroups
from edgedispatch.runtime.contain import REAPER, Containment
from edgedispatch.runtime.process import base_env
from edgedispatch.runtime.sandbox import JOIN, Host, Sandbox

HOST = Host(bwrap="/usr/bin/bwrap", setpriv="/usr/bin/setpriv", root=True)


def sandbox(tmp_path: Path, hidden: list[str] = ()) -> Sandbox:  # type: ignore[assignment]
    return Sandbox(
        HOST,
        enabled=True,
        tenants=["", "acme", "globex"],
        uid_base=61000,
        tenant_root=tmp_path / "tenants",
        hidden=hidden,
    )


def pairs(argv: list[str], option: str) -> list[str]:
    """The destinations of every ``option SRC DEST`` (or ``option DEST``)."""
    width = 2 if option in ("--ro-bind", "--bind", "--symlink") else 1
    return [argv[i + width] for i, a in enumerate(argv) if a == option]


def test_each_tenant_runs_as_its_own_uid_in_config_order(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    assert [box.uid(t) for t in ("", "acme", "globex")] == [61000, 61001, 61002]
    argv = box.argv(["prog"], tenant="globex")
    at = argv.index("/usr/bin/setpriv")
    assert argv[at + 1 : at + 3] == ["--reuid=61002", "--regid=61002"]
    assert "--no-new-privs" in argv and "--bounding-set=-all" in argv
    assert argv[-1] == "prog"
    assert (tmp_path / "tenants" / "globex").stat().st_mode & 0o777 == 0o700


def test_the_config_and_data_are_masked_even_inside_a_bound_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    data = shared / "data"
    (data / "tenants").mkdir(parents=True)
    config = shared / "edgedispatch.toml"
    config.write_text("secret")
    box = Sandbox(
        HOST,
        enabled=True,
        tenants=["", "acme"],
        uid_base=61000,
        tenant_root=data / "tenants",
        hidden=[str(config), str(data)],
    )
    argv = box.argv(["prog"], tenant="acme", read_write=[str(shared)])
    home = str(data / "tenants" / "acme")
    # The mask comes after the bind that holds it; the tenant's own
    # directory, inside the masked data directory, is bound on top of it.
    bind_shared = argv.index(str(shared))
    mask = argv.index("--tmpfs", bind_shared)
    assert argv[mask + 1] == str(data)
    assert argv[argv.index("/dev/null") + 1] == str(config)  # a file: /dev/null over it
    assert pairs(argv, "--bind")[-1] == home and argv.index(home) > mask
    # Its parents, inside the empty mask, are made walkable for the uid.
    assert argv[argv.index(str(data / "tenants")) - 3 : argv.index(str(data / "tenants"))] == [
        "--perms",
        "0755",
        "--dir",
    ]


def test_only_the_system_python_and_the_agents_paths_are_shown(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    argv = sandbox(tmp_path).argv(["prog"], tenant="acme", cwd=str(agent))
    shown = pairs(argv, "--ro-bind")
    assert str(agent) in shown and sys.base_prefix in shown
    python = {sys.base_prefix, sys.prefix}
    others = [p for p in shown if not any(p.startswith(q) for q in python)]
    assert not [p for p in others if p.startswith(("/root/", "/home/", "/var/", "/srv/"))]
    assert argv[argv.index("--chdir") + 1] == str(agent)
    tmp = argv.index("/tmp")
    assert argv[tmp - 3 : tmp + 1] == ["--perms", "1777", "--tmpfs", "/tmp"]
    assert "--unshare-pid" in argv and "--die-with-parent" in argv


def test_nested_binds_parent_first(tmp_path: Path) -> None:
    outer = tmp_path / "a"
    inner = outer / "b"
    inner.mkdir(parents=True)
    argv = sandbox(tmp_path).argv(["p"], tenant="", read_only=[str(inner), str(outer)])
    shown = pairs(argv, "--ro-bind")
    assert str(outer) in shown and str(inner) not in shown  # shown with its parent


def test_the_environment_is_built_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-only")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "server-only")
    env = base_env({"MINE": "1"}, home="/home/t")
    assert env["MINE"] == "1" and env["HOME"] == "/home/t" and "PATH" in env
    assert "server-only" not in env.values()


def test_a_disabled_sandbox_adds_nothing(tmp_path: Path) -> None:
    box = Sandbox(HOST, enabled=False, tenants=[""], uid_base=61000, tenant_root=tmp_path)
    assert box.argv(["prog", "x"], tenant="") == ["prog", "x"]
    assert box.uid("") is None


def test_without_cells_or_namespaces_each_process_starts_under_the_reaper(
    tmp_path: Path,
) -> None:
    cfg = msgspec.structs.replace(
        Config(),
        sandbox=SandboxConfig(cgroups=False, bubblewrap=False, tenant_dirs=str(tmp_path)),
    )
    contain = Containment(cfg, host=HOST, tag="t")
    launch = contain.launch(
        ["prog", "x"], tenant="", name="n", env={}, cwd="/", memory_mb=0, max_procs=10
    )
    assert launch.argv == [sys.executable, "-I", "-S", REAPER, "prog", "x"]
    assert launch.reaped and launch.cell is None and not launch.sandboxed
    said = "\n".join(contain.describe())
    assert "subreaper" in said and "sandbox.cgroups is false" in said
    assert "bubblewrap: turned off" in said  # never pretends


def test_a_pid_namespace_holds_the_tree_without_cells(tmp_path: Path) -> None:
    cfg = msgspec.structs.replace(
        Config(), sandbox=SandboxConfig(cgroups=False, tenant_dirs=str(tmp_path))
    )
    contain = Containment(cfg, host=HOST, tag="t")
    launch = contain.launch(
        ["prog"], tenant="", name="n", env={}, cwd="/", memory_mb=0, max_procs=10
    )
    assert launch.argv[0] == "/usr/bin/bwrap" and not launch.reaped and launch.sandboxed


# ----------------------------------------------------------------------
# cgroup cells, on this host's cgroups (root and a writable v1 or v2 only)


@pytest.fixture
def tree() -> Iterator[cgroups.Tree]:
    tree, why = cgroups.open_tree(f"test{os.getpid()}")
    if tree is None:
        pytest.skip(f"no cgroups here: {why}")
    yield tree
    tree.remove()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_all_reaches_a_setsid_double_forked_process(tree: cgroups.Tree) -> None:
    cell = tree.cell("escape", memory_mb=64, max_procs=32)
    script = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    join = ["/bin/sh", "-c", JOIN, "join", *cell.procs_files(), "--"]
    proc = subprocess.Popen(join + [sys.executable, "-c", script])
    deadline = time.monotonic() + 5
    while len(cell.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = cell.pids()
    assert len(pids) >= 2
    cell.remove()
    proc.wait(5)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in pids)


def test_a_dead_runs_leftovers_are_killed_at_start_up(tree: cgroups.Tree) -> None:
    # A run whose process is gone (a pid that cannot be ours, with a start
    # time that matches nothing), with a process left in one of its cells.
    tag = f"test{os.getpid()}"
    dead_root = Path(tree.path.split(", ")[-1]).parent / "run-999999999-1"
    paths = [Path(p).parent / "run-999999999-1" / "left" for p in tree.path.split(", ")]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for path in paths:
            # ./dev test's other lane may open a tree between the mkdir and
            # the write, and remove the dead run's (still empty) cell as it
            # should; then make it again.
            for _ in range(20):
                path.mkdir(parents=True, exist_ok=True)
                try:
                    (path / "cgroup.procs").write_text(str(sleeper.pid))
                    break
                except FileNotFoundError:
                    continue
            else:
                pytest.fail(f"could not put a process in {path}")
        again, _ = cgroups.open_tree(tag)
        assert again is not None
        # Another process may open a tree meanwhile and kill them first:
        # ./dev test runs the unit tests on both cores at once, and the
        # other lane's tests open trees (a clean-clone run saw 0 here).
        # Either way they are killed, and the dead run's cells are gone.
        assert again.kill_leftovers() in (0, 1)
        assert sleeper.wait(5) == -9
        assert not dead_root.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
