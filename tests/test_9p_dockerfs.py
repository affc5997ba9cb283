"""9P over the real dockerfs mount (issue 3): what 9mount users see is the FUSE tree.

``dockerfs-fuse --9p`` re-exports the mount, so the shim reads through FUSE into
live Docker data: special files (ctl, logs, logs.follow, inspect.json), escaped
label names, sizes the FUSE side computes.  Checked with clients nobody here wrote:

- diod's ``diodls``/``diodcat`` on the host (9P2000.L), read against the FUSE view;
- the Linux kernel under qemu with 9mount's options, ``find`` and ``cat``, in ONE boot
  that also runs Debian's own ``9mount`` and ``9umount`` as a user, exactly as the
  README does, and drives the ctl files: a write refused by the read-only shim, and
  a ``pause`` let through by a second mount started with ``--9p-allow-control``.

Everything is set up once per module (engine containers, two mounts, one boot), since
a boot costs seconds under TCG.  Missing qemu, kernel, 9mount or diod skips outside CI
and fails under CI=true.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Engine, Mount, require, start_mount, stop_mount
from qemu9p import (
    GUEST_HOME,
    GUEST_USER,
    NINEMOUNT_DIR,
    NINEMOUNT_LOOPBACK_PORT,
    GuestError,
    GuestResult,
    Listing,
    guest_9mount_script,
    guest_listing,
    guest_timeline,
    guest_variant_script,
    missing_9mount,
    missing_prerequisites,
    negotiated,
    ninemount_userland,
    run_guest_full,
    sections,
    split_variants,
)
from support.private_dockerd import PrivateDockerd
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse, pytest.mark.qemu]

IMG = "busybox:latest"
GUEST_TIMEOUT = 180.0
# 9mount's options as root (see test_9p_kernel.py for where they come from).
NINE_MOUNT = "tcp,trans=tcp,name=root,uname=root,noextend,nodev,port=564"
# What a walk must not open (ctl, logs, logs.follow, wait, stats) and each
# container's own filesystem (root/, compared with the engine's own export in
# test_container_fs.py) are links into the unlisted .live: 9P2000, which has
# no links, leaves them out of listings; .L lists them as links.
LIVE = ".live"
# "Up 2 seconds" becomes "Up 12 seconds" while the guest boots, so Status content (and
# so its size) is compared only where both views are taken close together (diodcat,
# read between two FUSE reads); the guest, seconds later, keeps Status in the path
# list and reads it, but only checks that it still says "Up ...".
VOLATILE = ("Status",)
# A container's entries that are links into .live: 9P2000 leaves them out of listings,
# so the guest's find must print none of them.
LINKS = ("ctl", "logs", "logs.follow", "top", "wait", "stats", "root", "exec")
# The container fields the 9mount check reads, as the seed's README example does.
FIELDS = ("ID", "Image", "State", "Names/0")


def _diod_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


# --- the mounts ---------------------------------------------------------------------

LISTENING = re.compile(r"listening on tcp!127\.0\.0\.1!(\d+)")


def mount_with_9p(host: str, mountpoint: Path, *extra: str) -> tuple[Mount, int]:
    """A dockerfs mount whose --9p shim listens on a port the kernel picked (port 0,
    so two runs never race for one), read back from the mount's log."""
    mount = start_mount(host, mountpoint, "--9p", "tcp!127.0.0.1!0", *extra)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = LISTENING.search(mount.log_text())
        if found:
            return mount, int(found.group(1))
        if mount.proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_mount(mount)
    raise AssertionError(f"the 9P shim never announced its port:\n{mount.log_text()}")


def wait_for_log(engine: Engine, cid: str, line: bytes, timeout: float = 15) -> None:
    """The logs file must not grow between the FUSE view and the 9P views of it."""
    wait_until(
        lambda: line in engine.api_raw(f"/containers/{cid}/logs?stdout=1&stderr=1"),
        f"{cid[:12]} to log {line!r}",
        timeout,
    )


def fuse_listing(root: Path) -> Listing:
    """{'./path': (kind, size, sha256)} of the FUSE mount, as the guest reports it.

    Links into .live are left out, as 9P2000 leaves them out; the volatile files
    get size -1 and no hash, which fuse_vs_guest then ignores.
    """
    out: Listing = {".": ("d", 0, "")}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not leads_into_live(base / d)]
        for d in dirnames:
            out["./" + str((base / d).relative_to(root))] = ("d", 0, "")
        for f in filenames:
            path = base / f
            if leads_into_live(path):
                continue
            rel = "./" + str(path.relative_to(root))
            if f in VOLATILE:
                out[rel] = ("f", -1, "")
            else:
                # st_size, not len(data): a file made when opened (inspect.json)
                # say 0 on FUSE, and 9P must pass on what FUSE says, not fix it.
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("f", path.lstat().st_size, digest)
    return out


def leads_into_live(path: Path) -> bool:
    return path.is_symlink() and LIVE in os.readlink(path).split("/")


def differences(expected: Listing, got: Listing) -> str:
    for path, (kind, size, _) in expected.items():
        if size == -1 and path in got:
            got[path] = (kind, -1, "")
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(p for p in set(expected) & set(got) if expected[p] != got[p])
    if not (missing or extra or wrong):
        return ""
    return (
        f"missing {missing[:10]}, extra {extra[:10]}, "
        f"differing {[(p, expected[p], got[p]) for p in wrong[:5]]}"
    )


# --- everything, once ---------------------------------------------------------------


@dataclass
class World:
    engine: Engine
    ids: dict[str, str]  # container name -> ID
    ro: Mount  # --9p, read-only
    ro_port: int
    ctl: Mount  # --9p --9p-allow-control
    ctl_port: int
    before: Listing  # the FUSE view, taken just before the boot
    fields: dict[str, str]  # {"<id>/<field>": content} of FIELDS on FUSE, just before it
    boot: GuestResult | None
    outputs: dict[str, str]
    boot_error: str
    qemu_missing: str | None  # why the guest cannot run here, for the skip
    ninemount_missing: str | None  # why the guest cannot run 9mount, for the skip


# The guest's side of each mount, in the order they run: reads, then the refused
# write, then the pause, so the pause cannot change what the reads see.
READ_BODY = """
echo @@stat
find . -exec stat -c '%F|%s|%n' {} + || echo 'find failed'
echo @@sha
find . -type f ! -name Status -exec sha256sum {} + || echo 'sha256sum failed'
echo @@cat
cat */Image */Names/0
echo @@status
cat */Status
echo @@write
if echo pause > {target}/ctl; then echo allowed; else echo refused; fi
"""
# Run as the guest's user on the 9mount'ed tree ($mnt): the README's `find`, then each
# container's fields, one `path=content` line each.
NINEMOUNT_BODY = f"""
    echo @@find
    find ~/{NINEMOUNT_DIR}
    echo @@fields
    for d in "$mnt"/*/; do
        for f in {" ".join(FIELDS)}; do echo "${{d#$mnt/}}$f=$(cat "$d$f")"; done
    done
"""
CONTROL_BODY = """
echo @@write
if echo pause > {target}/ctl; then echo allowed; else echo refused; fi
"""


@pytest.fixture(scope="module")
def world(
    dockerd_session: PrivateDockerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    qemu_missing = missing_prerequisites()  # only the kernel checks need it
    ninemount_missing = qemu_missing or missing_9mount()
    if dockerd_session.proc is None or dockerd_session.proc.poll() is not None:
        dockerd_session.start()  # an earlier test stopped it (as the engine fixture does)
    engine = Engine(dockerd_session)
    base = tmp_path_factory.mktemp("ninep-dockerfs")
    mounts: list[Mount] = []
    try:
        ids = {
            "web": engine.run(
                "--name=web", "-l", "com.example/tier=front", IMG, "sh", "-c",
                "echo web says hello; sleep 1d",
            ),
            "db": engine.run("--name=db", "-v", "dbdata:/data", IMG, "sleep", "1d"),
            "plain": engine.run("--name=plain", IMG, "sleep", "1d"),
        }  # fmt: skip
        wait_for_log(engine, ids["web"], b"web says hello")
        ro, ro_port = mount_with_9p(engine.host, base / "ro")
        mounts.append(ro)
        ctl, ctl_port = mount_with_9p(engine.host, base / "ctl", "--9p-allow-control")
        mounts.append(ctl)

        # One boot: the reads, the real 9mount (on the read-only shim too), then the pause.
        ports = [ro_port, ro_port, ctl_port]
        script = guest_variant_script(
            0, "read-only", NINE_MOUNT, READ_BODY.replace("{target}", ids["web"])
        )
        if ninemount_missing is None:
            script += guest_9mount_script(1, "9mount", NINEMOUNT_BODY)
        script += guest_variant_script(
            2, "allow-control", NINE_MOUNT, CONTROL_BODY.replace("{target}", ids["plain"])
        )
        before = fuse_listing(ro.path)
        fields = {
            f"{cid}/{name}": (ro.path / cid / name).read_text().rstrip("\n")
            for cid in ids.values()
            for name in FIELDS
        }
        boot: GuestResult | None = None
        boot_error = qemu_missing or ""
        try:
            if qemu_missing is None:
                files = ninemount_userland() if ninemount_missing is None else None
                boot = run_guest_full(ports, script, GUEST_TIMEOUT, files)
                print(
                    f"\ndockerfs over 9P: one boot {boot.seconds:.1f}s "
                    f"(guest uptime per mount: {guest_timeline(boot.output)})"
                )
        except GuestError as exc:
            boot_error = str(exc)
        yield World(
            engine=engine,
            ids=ids,
            ro=ro,
            ro_port=ro_port,
            ctl=ctl,
            ctl_port=ctl_port,
            before=before,
            fields=fields,
            boot=boot,
            outputs=split_variants(boot.output) if boot else {},
            boot_error=boot_error,
            qemu_missing=qemu_missing,
            ninemount_missing=ninemount_missing,
        )
    finally:
        for m in mounts:
            stop_mount(m)
        engine.remove_started()


def variant(world: World, name: str) -> tuple[dict[str, list[str]], str]:
    """One mount's sections, and the context a failure message needs."""
    require(world.qemu_missing is None, world.qemu_missing or "")
    assert world.boot is not None, world.boot_error
    output = world.outputs.get(name)
    context = (
        f"[{name}; boot {world.boot.seconds:.1f}s]\n--- output ---\n{output}\n"
        f"--- kernel messages ---\n{world.boot.dmesg}\n"
        f"--- mount logs ---\n{world.ro.log_text()[-3000:]}\n{world.ctl.log_text()[-3000:]}"
    )
    assert output is not None, f"{name} never ran\n{world.boot.output}"
    parts = sections(output)
    assert "mountfailed" not in parts and "end" in parts, context
    return parts, context


# --- (a) diod's clients on the host -------------------------------------------------


def diod(tool: str, port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    path = _diod_tool(tool)
    require(path is not None, f"{tool} not installed (Debian package diod)")
    assert path is not None
    argv = [path, "-s", f"127.0.0.1:{port}", "-a", "/", *args]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False)


def diodls(port: int, rel: str) -> dict[str, tuple[str, int]]:
    """{name: (kind, size)} of one directory, as `diodls -l` shows it."""
    done = diod("diodls", port, "-l", rel or "/")
    assert done.returncode == 0, (rel, done.stderr)
    out: dict[str, tuple[str, int]] = {}
    for line in done.stdout.decode().splitlines():
        fields = line.split(maxsplit=8)
        if fields[8] in (".", ".."):
            continue
        out[fields[8]] = (fields[0][0], int(fields[4]))
    return out


def test_diod_lists_and_reads_the_fuse_tree(world: World) -> None:
    """diodls walks the same tree as os.walk on FUSE (names, types, sizes) and diodcat
    reads the same bytes, through the shim that dockerfs-fuse --9p started."""
    root = world.ro.path
    files: list[str] = []
    links = 0
    pending = [""]
    while pending:
        rel = pending.pop()
        listed = diodls(world.ro_port, rel)
        local = sorted(os.listdir(root / rel))
        assert sorted(listed) == local, f"{rel or '/'}: 9P {sorted(listed)} vs FUSE {local}"
        for name, (kind, size) in listed.items():
            child = f"{rel}/{name}" if rel else name
            info = (root / child).lstat()
            if stat.S_ISLNK(info.st_mode):
                # .L shows links as links; diodls prints one's mode as a file's
                # and its size (the target's length).
                assert (kind, size) == ("-", info.st_size), child
                links += leads_into_live(root / child)
                continue
            assert kind == ("d" if stat.S_ISDIR(info.st_mode) else "-"), child
            if kind == "d":
                pending.append(child)
                continue
            if name not in VOLATILE:
                assert size == info.st_size, f"{child}: 9P size {size}, FUSE {info.st_size}"
            files.append(child)
    assert len(files) > 3 * 10, files
    assert links == 3 * 8, links  # ctl, logs, logs.follow, root, top, stats, wait, exec of each

    steady = [f for f in files if Path(f).name not in VOLATILE]
    expected = b"".join((root / f).read_bytes() for f in steady)
    done = diod("diodcat", world.ro_port, *steady)
    assert done.returncode == 0, done.stderr
    if done.stdout != expected:  # find the culprit for the message
        bad = [
            f for f in steady if diod("diodcat", world.ro_port, f).stdout != (root / f).read_bytes()
        ]
        pytest.fail(f"diodcat differs from FUSE for {bad[:10]}")

    # Status, read over 9P between two FUSE reads: it must equal one of them.
    for f in (f for f in files if Path(f).name in VOLATILE):
        first = (root / f).read_bytes()
        got = diod("diodcat", world.ro_port, f).stdout
        second = (root / f).read_bytes()
        assert got in (first, second), (f, got, first, second)


# --- (b) the kernel, with 9mount's options ------------------------------------------


def test_kernel_find_and_cat_match_fuse(world: World) -> None:
    """`find` and `cat` through the kernel's 9P client match the FUSE mount on the host:
    every path with its type and size, every core file's sha256 (Status by path only)."""
    parts, context = variant(world, "read-only")
    mounts = parts.get("mounts", [])
    assert mounts and negotiated(mounts[0]) == "9P2000", f"not plain 9P2000\n{context}"
    got = guest_listing(parts)
    diff = differences(world.before, got)
    assert not diff, f"{diff}\n{context}"
    images = b"".join(
        (world.ro.path / cid / "Image").read_bytes() for cid in sorted(world.ids.values())
    )
    names = b"".join(
        (world.ro.path / cid / "Names" / "0").read_bytes() for cid in sorted(world.ids.values())
    )
    assert parts["cat"] == (images + names).decode().splitlines(), context
    # Status is read over 9P too, just not compared byte for byte (see VOLATILE).
    assert len(parts["status"]) == 3, context
    assert all(line.startswith("Up ") for line in parts["status"]), context
    labels = [p for p in got if p.endswith("/Labels/com.example%2Ftier")]
    assert len(labels) == 1, f"the escaped label is not there\n{context}"


# --- (c) the seed's own client: Debian's 9mount and 9umount, run by a user ------------


def test_9mount_as_the_readme_says(world: World) -> None:
    """`9mount 'tcp!localhost!9999' ~/n/9dockerfs` run by a user mounts the shim in
    plain 9P2000; `find ~/n/9dockerfs` lists every container with its fields (and
    every other path of the FUSE view but the entries that may be links), their
    contents are FUSE's, and `9umount` takes the mount away again."""
    require(world.ninemount_missing is None, world.ninemount_missing or "")
    parts, context = variant(world, "9mount")
    mnt = f"{GUEST_HOME}/{NINEMOUNT_DIR}"
    mounts = parts.get("mounts", [])
    assert len(mounts) == 1, f"9mount left no single /proc/mounts line\n{context}"
    columns = mounts[0].split()
    assert columns[:3] == ["127.0.0.1", mnt, "9p"], f"not localhost's shim on {mnt}\n{context}"
    assert negotiated(mounts[0]) == "9P2000", f"not plain 9P2000\n{context}"
    options = columns[3].split(",")
    assert f"uname={GUEST_USER}" in options, f"not mounted as {GUEST_USER}\n{context}"
    assert f"port={NINEMOUNT_LOOPBACK_PORT}" in options, context

    found = {"." + line.removeprefix(mnt) for line in parts.get("find", []) if line.startswith(mnt)}
    core = set(world.before)
    assert not core - found, f"find misses {sorted(core - found)[:10]}\n{context}"
    entered = sorted(p for p in found if set(p.split("/")[2:]) & {*LINKS, LIVE})
    assert not entered, f"find went behind a link: {entered[:10]}\n{context}"
    for cid in world.ids.values():
        for name in FIELDS:
            assert f"./{cid}/{name}" in found, f"find misses {cid[:12]}/{name}\n{context}"

    got = dict(line.split("=", 1) for line in parts.get("fields", []) if "=" in line)
    assert got == world.fields, context
    assert parts.get("umount") == ["9umount ok"], f"9umount did not unmount\n{context}"


# --- (d) control: refused by default, let through with --9p-allow-control -------------


def test_ctl_write_refused_when_read_only(world: World) -> None:
    """Whoever reaches the shim's socket must not drive Docker unless asked for."""
    parts, context = variant(world, "read-only")
    said = parts.get("write", [])
    assert said[-1:] == ["refused"], context
    # The shell's complaint shows the errno the shim's refusal became in the guest.
    assert any(e in " ".join(said) for e in ("Permission denied", "not permitted")), context
    state = world.engine.api(f"/containers/{world.ids['web']}/json")["State"]
    assert not state["Paused"], f"a refused ctl write paused the container\n{context}"


def test_ctl_pause_with_allow_control(world: World) -> None:
    """With --9p-allow-control, `echo pause > ctl` from a 9mount'ed kernel client is
    the Docker API call, seen by the engine itself."""
    parts, context = variant(world, "allow-control")
    mounts = parts.get("mounts", [])
    assert mounts and negotiated(mounts[0]) == "9P2000", f"not plain 9P2000\n{context}"
    assert parts.get("write") == ["allowed"], context
    state = world.engine.api(f"/containers/{world.ids['plain']}/json")["State"]
    assert state["Paused"], f"pause over 9P did not pause the container\n{context}"
