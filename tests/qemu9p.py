"""Boot a real Linux kernel under qemu so its 9P client can mount a server on this host.

The host kernel usually has no 9P module (and containers cannot load one), yet the
kernel's client is the 9P client that matters most to users of 9mount.  Debian's
``linux-image-amd64`` ships it as modules and ``qemu-system-x86`` boots that kernel
under TCG (no KVM needed) in seconds, so a test can:

1. build a throw-away initramfs: static busybox, the 9P and NIC modules with their
   dependencies (taken from ``modules.dep``), an ``/init`` and the caller's script;
2. boot it with user-mode networking restricted to guestfwd rules only, so the guest's
   ``10.0.2.100:564`` is the host's ``127.0.0.1:PORT`` (``10.0.2.100:565`` the second
   port given, and so on) and nothing else is reachable;
3. read the serial console and return what the script printed.

The guest has no libc, so a dynamically linked host program (9mount, 9umount) goes in
with the libraries ``ldd`` names, at the same paths, and the few /etc files glibc
reads: see :func:`ninemount_userland`.

Everything is discovered at run time from the standard Debian locations (``/boot``,
``/lib/modules``, ``$PATH``) so nothing machine-specific is baked in.
``scripts/install-qemu-deps`` installs the packages.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The address the guest dials; qemu's slirp forwards it to the host's loopback port.
# Rule i of a boot with several ports is port 564 + i: see guest_server_port.
GUEST_SERVER_ADDR = "10.0.2.100"
GUEST_SERVER_PORT = 564
MAX_FORWARDS = 64
GUEST_ADDR = "10.0.2.15/24"

# 9p needs 9pnet (+ fscache/netfs, pulled from modules.dep); 9pnet_fd is the tcp
# transport; e1000 is the NIC with no module dependencies, so the fewest files to ship.
GUEST_MODULES = ("9p", "9pnet_fd", "e1000")
QEMU_NIC = "e1000"

BEGIN = "==QEMU9P-BEGIN=="
END_RE = re.compile(r"^==QEMU9P-END rc=(\d+)==$", re.MULTILINE)
DMESG = "==QEMU9P-DMESG=="
DONE = "==QEMU9P-DONE=="

BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")

# 9mount is for users (it is setuid root and mounts only where its caller may write),
# so the guest has one, and runs it as the README does: the shim on localhost:9999 and
# the mount under the user's home, the one place Debian's 9umount lets a user unmount
# (elsewhere it looks for a name= option that the kernel never shows in /proc/mounts).
GUEST_USER = "user"
GUEST_UID = 1000
GUEST_HOME = f"/home/{GUEST_USER}"
NINEMOUNT_DIAL = "tcp!localhost!9999"
NINEMOUNT_LOOPBACK_PORT = 9999
NINEMOUNT_DIR = "n/9dockerfs"  # under the user's home


class QemuUnavailable(RuntimeError):
    """A prerequisite (qemu, kernel, modules, static busybox, 9mount) is missing here.

    Kept apart from :class:`GuestError` so tests can skip on it (or fail under CI)
    without ever hiding a real failure of the guest or the server.
    """


class GuestError(RuntimeError):
    """The guest booted but did not finish as expected; the console is attached."""

    def __init__(self, message: str, console: str) -> None:
        super().__init__(f"{message}\n--- guest console ---\n{console[-8000:]}")
        self.console = console


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel image and the module tree built for it."""

    release: str
    vmlinuz: Path
    modules_dir: Path


@dataclass(frozen=True)
class GuestResult:
    """What the caller's script printed and how it exited, plus kernel messages."""

    output: str
    rc: int
    dmesg: str
    console: str
    seconds: float


@dataclass(frozen=True)
class GuestFile:
    """A file to put into the initramfs besides busybox: its bytes and mode bits
    (setuid included); it belongs to root."""

    data: bytes
    mode: int = 0o644


def guest_server_port(index: int) -> int:
    """The guest-side port of the INDEXth host port passed to run_guest_full.

    One rule per mount because qemu 7.2 connects each guestfwd rule to the host
    once, at start-up, and hands that single stream to the first guest connection:
    a boot that mounts N times needs N rules.  The rules differ in guest port, not
    address, because qemu names each rule's chardev ``guestfwd.tcp.PORT`` and
    refuses two of the same name ("duplicate yank instance").
    """
    if not 0 <= index < MAX_FORWARDS:
        raise ValueError(f"guestfwd index {index} out of range 0..{MAX_FORWARDS - 1}")
    return GUEST_SERVER_PORT + index


def _version_key(release: str) -> list[tuple[int, str]]:
    """Order releases like 6.1.0-9 < 6.1.0-10 so the newest installed kernel wins."""
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", release)]


def _find_module_file(modules_dir: Path, name: str) -> Path | None:
    """Find NAME.ko in any of the compressions Debian has used for modules."""
    wanted = name.replace("-", "_")
    for path in (modules_dir / "kernel").rglob("*.ko*"):
        stem = path.name.split(".ko", 1)[0].replace("-", "_")
        if stem == wanted:
            return path
    return None


def find_qemu() -> str:
    """Locate qemu-system-x86_64 on PATH."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise QemuUnavailable(
            "qemu-system-x86_64 not found (Debian package qemu-system-x86; "
            "run scripts/install-qemu-deps as root)"
        )
    return qemu


def _is_static_elf(path: Path) -> bool:
    """True when PATH is an ELF with no PT_INTERP, i.e. runs with no libc in the guest."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> Path:
    """Locate a statically linked busybox, the only userland the guest gets."""
    candidates = [shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"]
    for cand in candidates:
        if cand and _is_static_elf(Path(cand)):
            return Path(cand)
    raise QemuUnavailable(
        "no statically linked busybox found (Debian package busybox-static; "
        "run scripts/install-qemu-deps as root)"
    )


def find_kernel() -> Kernel:
    """Pick the newest readable /boot/vmlinuz-* whose module tree has the 9P client.

    A kernel without modules for it (or whose image is root-only, as Ubuntu ships
    them) cannot be used, so those are skipped with the reason kept for the error.
    """
    problems: list[str] = []
    images = sorted(
        BOOT_DIR.glob("vmlinuz-*"),
        key=lambda p: _version_key(p.name.removeprefix("vmlinuz-")),
        reverse=True,
    )
    for image in images:
        release = image.name.removeprefix("vmlinuz-")
        modules_dir = MODULES_ROOT / release
        if not os.access(image, os.R_OK):
            problems.append(f"{image} is not readable")
            continue
        if not (modules_dir / "modules.dep").is_file():
            problems.append(f"{modules_dir}/modules.dep missing")
            continue
        builtin = _builtin_modules(modules_dir)
        missing = [
            m
            for m in GUEST_MODULES
            if m.replace("-", "_") not in builtin and _find_module_file(modules_dir, m) is None
        ]
        if missing:
            problems.append(f"{release} lacks modules {', '.join(missing)}")
            continue
        return Kernel(release=release, vmlinuz=image, modules_dir=modules_dir)
    detail = "; ".join(problems) if problems else f"no {BOOT_DIR}/vmlinuz-* at all"
    raise QemuUnavailable(
        "no usable kernel with 9P modules "
        f"({detail}; Debian package linux-image-amd64, run scripts/install-qemu-deps as root)"
    )


def missing_prerequisites() -> str | None:
    """Why the guest cannot run here, or None when it can; for skip messages."""
    try:
        find_qemu()
        find_busybox()
        find_kernel()
    except QemuUnavailable as exc:
        return str(exc)
    return None


def find_9mount() -> tuple[Path, Path]:
    """Locate the 9mount and 9umount programs the guest runs."""
    ninemount, ninemount_u = shutil.which("9mount"), shutil.which("9umount")
    if ninemount is None or ninemount_u is None:
        raise QemuUnavailable(
            "9mount or 9umount not found (Debian package 9mount; "
            "run scripts/install-qemu-deps as root)"
        )
    return Path(ninemount), Path(ninemount_u)


def missing_9mount() -> str | None:
    """Why the guest cannot run 9mount, or None when it can; for skip messages."""
    try:
        for program in find_9mount():
            shared_libraries(program)
    except QemuUnavailable as exc:
        return str(exc)
    return None


# A line of ldd's output that names a file: "libc.so.6 => /lib/.../libc.so.6 (0x...)" or
# the loader's "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
LDD_PATH = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", re.MULTILINE)


def shared_libraries(program: Path) -> list[str]:
    """The loader and the libraries PROGRAM loads, as the paths the loader looks for.

    The guest gets each at the very path ldd names (the loader's own path is written
    into the program), which is also where a setuid program's loader looks: it
    ignores LD_LIBRARY_PATH.
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        raise QemuUnavailable("ldd not found (Debian package libc-bin)")
    done = subprocess.run([ldd, str(program)], capture_output=True, text=True, check=False)
    libraries = LDD_PATH.findall(done.stdout)
    if done.returncode != 0 or not libraries:
        raise QemuUnavailable(f"ldd {program} failed: {done.stdout.strip()} {done.stderr.strip()}")
    return libraries


def dynamic_executable(program: Path) -> dict[str, GuestFile]:
    """PROGRAM at its own path with its mode (setuid kept), and what it links to."""
    files = {str(program): GuestFile(program.read_bytes(), program.stat().st_mode & 0o7777)}
    for library in shared_libraries(program):
        files[library] = GuestFile(Path(library).read_bytes(), 0o755)
    return files


def ninemount_userland() -> dict[str, GuestFile]:
    """9mount, 9umount, their libraries, and what glibc reads for them in the guest.

    Both call getpwuid (9mount names the user to the server, 9umount lets a user
    unmount only under their home), and 9mount resolves the dial string's host with
    getaddrinfo; glibc's "files" lookups are part of libc itself, so /etc/passwd,
    /etc/group and /etc/hosts, with an nsswitch.conf that names only them, are enough.
    """
    files: dict[str, GuestFile] = {}
    for program in find_9mount():
        files.update(dynamic_executable(program))
    uid = GUEST_UID
    files["/etc/passwd"] = GuestFile(
        f"root:x:0:0:root:/root:/bin/sh\n"
        f"{GUEST_USER}:x:{uid}:{uid}:{GUEST_USER}:{GUEST_HOME}:/bin/sh\n".encode()
    )
    files["/etc/group"] = GuestFile(f"root:x:0:\n{GUEST_USER}:x:{uid}:\n".encode())
    files["/etc/hosts"] = GuestFile(b"127.0.0.1 localhost\n")
    files["/etc/nsswitch.conf"] = GuestFile(b"passwd: files\ngroup: files\nhosts: files\n")
    return files


def _builtin_modules(modules_dir: Path) -> set[str]:
    """Names of modules compiled into the kernel, which need no insmod."""
    path = modules_dir / "modules.builtin"
    if not path.is_file():
        return set()
    return {
        Path(line.strip()).name.split(".ko", 1)[0].replace("-", "_")
        for line in path.read_text().splitlines()
        if line.strip()
    }


def _module_deps(modules_dir: Path) -> dict[str, list[str]]:
    """modules.dep as {relative path: [relative dependency paths]}."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod.strip()] = rest.split()
    return deps


def module_load_order(kernel: Kernel, names: Iterable[str] = GUEST_MODULES) -> list[Path]:
    """The .ko files to insmod, each after everything it depends on.

    busybox insmod does not resolve dependencies, so the order has to be computed
    here from modules.dep (which lists the full transitive closure per module).
    """
    deps = _module_deps(kernel.modules_dir)
    builtin = _builtin_modules(kernel.modules_dir)
    order: list[str] = []

    def visit(rel: str, stack: tuple[str, ...]) -> None:
        if rel in order or rel in stack:
            return
        for dep in deps.get(rel, []):
            visit(dep, (*stack, rel))
        order.append(rel)

    for name in names:
        if name.replace("-", "_") in builtin:
            continue
        path = _find_module_file(kernel.modules_dir, name)
        if path is None:
            raise QemuUnavailable(f"module {name} not found under {kernel.modules_dir}")
        visit(str(path.relative_to(kernel.modules_dir)), ())
    return [kernel.modules_dir / rel for rel in order]


def _module_bytes(path: Path) -> bytes:
    """Uncompressed module contents, since busybox insmod may not decompress."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise QemuUnavailable(f"{path} is zstd-compressed and no zstd tool is installed")
        return subprocess.run([zstd, "-dc", str(path)], check=True, capture_output=True).stdout
    return data


class _Cpio:
    """Writer for the newc cpio format the kernel unpacks as its initramfs.

    Written here rather than shelling out to cpio so that device nodes
    (/dev/console) can be created without root and without the cpio tool.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self._ino += 1
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        blob = header + encoded
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self._parts.append(blob)

    def directory(self, name: str) -> None:
        self._add(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, 0o020600, rdev=(major, minor))

    def symlink(self, name: str, target: str) -> None:
        self._add(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        out = b"".join(self._parts)
        return out + b"\0" * (-len(out) % 512)


def _init_script(modules: list[str]) -> str:
    """The guest's /init: modules, network, the caller's script, markers, power off.

    Console printk is turned down to emergencies once booted so kernel messages
    cannot interleave with the script's output; the messages the run caused are
    printed afterwards in their own section instead.
    """
    insmods = "\n".join(f"insmod /modules/{m} || echo 'insmod {m} failed'" for m in modules)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
dmesg -n 1
{insmods}
ip link set lo up
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 50 ]; do
    for d in /sys/class/net/*; do
        [ "${{d##*/}}" = lo ] || dev=${{d##*/}}
    done
    [ -n "$dev" ] || {{ sleep 0.1; i=$((i + 1)); }}
done
if [ -n "$dev" ]; then
    ip addr add {GUEST_ADDR} dev "$dev"
    ip link set "$dev" up
    # Wait for carrier so the first SYN is not dropped and retried a second later.
    i=0
    while [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
else
    echo 'no network interface in the guest'
fi
start=$(dmesg | wc -l)
echo {BEGIN}
sh /script 2>&1
rc=$?
echo "==QEMU9P-END rc=$rc=="
echo {DMESG}
dmesg | tail -n +$((start + 1))
echo {DONE}
sync
poweroff -f
"""


def build_initramfs(
    tmpdir: Path,
    script: str,
    kernel: Kernel | None = None,
    files: Mapping[str, GuestFile] | None = None,
) -> Path:
    """Write an initramfs that runs SCRIPT (busybox sh) once the 9P client can reach the host.

    SCRIPT runs as root with /mnt free for mounting (and a writable root to mkdir
    more mountpoints in); the Nth server is at ``GUEST_SERVER_ADDR`` port
    ``guest_server_port(N)``.  FILES ({absolute guest path: file}) are added, with
    their directories.  Returns the image path.
    """
    kernel = kernel or find_kernel()
    busybox = find_busybox()
    cpio = _Cpio()
    directories = ["bin", "dev", "proc", "sys", "tmp", "mnt", "modules"]
    for path in sorted(files or {}):
        parents = Path(path.lstrip("/")).parents
        directories += [str(d) for d in reversed(parents) if str(d) not in (".", *directories)]
    for d in directories:
        cpio.directory(d)
    for path, extra in sorted((files or {}).items()):
        cpio.file(path.lstrip("/"), extra.data, extra.mode)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    names: list[str] = []
    for module in module_load_order(kernel):
        name = module.name.split(".ko", 1)[0] + ".ko"
        names.append(name)
        cpio.file(f"modules/{name}", _module_bytes(module))
    cpio.file("init", _init_script(names).encode(), 0o755)
    cpio.file("script", script.encode(), 0o755)
    image = Path(tmpdir) / "initramfs.cpio"
    image.write_bytes(cpio.finish())
    return image


def qemu_command(
    kernel: Kernel, initrd: Path, ports: int | Sequence[int], console_log: Path
) -> list[str]:
    """The qemu command line: TCG, serial console to a file, forwarded ports only.

    ``restrict=on`` cuts the guest off from everything but the guestfwd rules, so a
    test can never reach beyond this host's loopback.  The NIC's option ROM is
    dropped because booting with -kernel never needs PXE and the ROM costs boot time.
    """
    ports = [ports] if isinstance(ports, int) else list(ports)
    if not 1 <= len(ports) <= MAX_FORWARDS:
        raise ValueError(f"need 1..{MAX_FORWARDS} ports, got {len(ports)}")
    forwards = ",".join(
        f"guestfwd=tcp:{GUEST_SERVER_ADDR}:{guest_server_port(i)}-tcp:127.0.0.1:{port}"
        for i, port in enumerate(ports)
    )
    return [
        find_qemu(),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-accel", "tcg",
        "-cpu", "max",
        "-smp", "1",
        "-m", "256",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable no_timer_check",
        "-serial", f"file:{console_log}",
        "-netdev",
        f"user,id=n0,restrict=on,{forwards}",
        "-device", f"{QEMU_NIC},netdev=n0,romfile=",
    ]  # fmt: skip


def _parse(console: str) -> tuple[str, int, str] | None:
    """Split the console into the script's output, its exit status and the dmesg part."""
    begin = console.find(BEGIN + "\n")
    if begin < 0:
        return None
    rest = console[begin + len(BEGIN) + 1 :]
    end = END_RE.search(rest)
    if end is None:
        return None
    output = rest[: end.start()]
    tail = rest[end.end() :]
    dmesg = ""
    if DMESG in tail:
        dmesg = tail.split(DMESG, 1)[1].split(DONE, 1)[0].strip("\n")
    return output, int(end.group(1)), dmesg


def run_guest_full(
    ports: int | Sequence[int],
    script: str,
    timeout: float = 60.0,
    files: Mapping[str, GuestFile] | None = None,
) -> GuestResult:
    """Boot the guest, run SCRIPT against the servers on 127.0.0.1:PORTS, and collect it all.

    Every server must already be listening: qemu connects each guestfwd rule at
    start-up, once, so the boot gets one TCP stream per port and SCRIPT should mount
    each ``guest_server_port(i)`` at most once (a second mount would continue on the
    same stream).  Passing one server's port several times gives several mounts of
    it in one boot, which is what keeps the suite fast: a boot costs seconds, a
    mount milliseconds.  FILES go into the initramfs (see build_initramfs).  qemu is
    killed (by its own PID) when TIMEOUT seconds pass.
    """
    ports = [ports] if isinstance(ports, int) else list(ports)
    kernel = find_kernel()
    with tempfile.TemporaryDirectory(prefix="qemu9p-") as tmp:
        tmpdir = Path(tmp)
        initrd = build_initramfs(tmpdir, script, kernel, files)
        console_log = tmpdir / "console.log"
        cmd = qemu_command(kernel, initrd, ports, console_log)
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        timed_out = False
        try:
            qemu_out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            qemu_out, _ = proc.communicate()
        seconds = time.monotonic() - started
        raw = console_log.read_bytes() if console_log.exists() else b""
    console = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "")
    qemu_text = qemu_out.decode("utf-8", errors="replace")
    if timed_out:
        raise GuestError(f"guest did not finish within {timeout:.0f}s", console + qemu_text)
    parsed = _parse(console)
    if parsed is None:
        hint = ""
        if "guestfwd" in qemu_text:
            hint = (
                f" (is a server listening on each of 127.0.0.1:{ports}? "
                "qemu connects to them at start-up)"
            )
        raise GuestError(
            f"guest console has no complete script output{hint} (qemu exit {proc.returncode}; "
            f"qemu said: {qemu_text.strip() or 'nothing'})",
            console,
        )
    output, rc, dmesg = parsed
    return GuestResult(output=output, rc=rc, dmesg=dmesg, console=console, seconds=seconds)


def run_guest(ports: int | Sequence[int], script: str, timeout: float = 60.0) -> str:
    """Run SCRIPT in the guest and return what it printed; a non-zero exit is an error.

    The error carries the kernel messages of the run, which is where the 9P client
    says why a mount or a read failed.
    """
    result = run_guest_full(ports, script, timeout)
    if result.rc != 0:
        raise GuestError(
            f"guest script exited {result.rc}\n--- output ---\n{result.output}"
            f"\n--- kernel messages ---\n{result.dmesg}",
            result.console,
        )
    return result.output


# --- scripts that mount several times in one boot, and their output --------------------
#
# Shared by the kernel tests: each mount ("variant") prints between its own markers and
# its output splits into @@sections, so one boot serves many checks and a failure still
# names the variant it belongs to.

Listing = dict[str, tuple[str, int, str]]  # {"./path": (kind, size, sha256)}

# Everything a variant prints sits between these, so one boot's output splits per variant.
VARIANT_BEGIN = "@@@variant "
VARIANT_END = "@@@endvariant "


def guest_variant_script(index: int, name: str, options: str, body: str) -> str:
    """Mount guestfwd INDEX at /mnt/vINDEX with OPTIONS, run BODY there, unmount.

    ``port=564`` in OPTIONS becomes this forward's guest port, since each forward
    needs its own (see qemu9p.guest_server_port); the first variant keeps 564, so
    it runs 9mount's output unchanged, and the others differ only in where they
    connect.

    A failed mount is reported in the variant's section and the next variant still
    runs, so one bad variant cannot hide how the others did.
    """
    mnt = f"/mnt/v{index}"
    port = guest_server_port(index)
    options = re.sub(r"(^|,)port=\d+", rf"\1port={port}", options)
    if f"port={port}" not in options.split(","):
        options += f",port={port}"
    return f"""
echo '{VARIANT_BEGIN}{name}'
echo "@@@uptime $(cut -d' ' -f1 /proc/uptime)"
mkdir -p {mnt}
if mount -t 9p -o {options} {GUEST_SERVER_ADDR} {mnt}; then
    echo @@mounts
    grep ' {mnt} ' /proc/mounts
    cd {mnt} && {{
{body}
    }}
    cd /
    umount {mnt} || echo 'umount failed'
    echo @@end
else
    echo "@@mountfailed rc=$?"
fi
echo "@@@uptime $(cut -d' ' -f1 /proc/uptime)"
echo '{VARIANT_END}{name}'
"""


def guest_9mount_script(index: int, name: str, body: str) -> str:
    """Mount guestfwd INDEX with the real 9mount as the guest's user, run BODY, 9umount.

    Run as the README says, ``9mount 'tcp!localhost!9999' ~/n/9dockerfs``, from a
    login shell of GUEST_USER, with the mountpoint in their home.  qemu can forward
    only the guest's network, never its loopback, so a busybox ``nc`` in the guest
    listens on localhost:9999 and relays the one connection, byte for byte, to
    guestfwd INDEX.  BODY runs as the user too, with ``$mnt`` the mountpoint; the
    sections are those of guest_variant_script plus @@umount (9umount's verdict,
    then whether /proc/mounts still has the mount).
    """
    port = guest_server_port(index)
    mnt = f"{GUEST_HOME}/{NINEMOUNT_DIR}"
    # A listening socket in /proc/net/tcp or tcp6 (busybox nc binds [::] where it can).
    listening = f":{NINEMOUNT_LOOPBACK_PORT:04X} [0-9A-F]*:0000 0A "
    user_script = f"""
mnt=$HOME/{NINEMOUNT_DIR}
if 9mount '{NINEMOUNT_DIAL}' "$mnt"; then
    echo @@mounts
    grep " $mnt " /proc/mounts
{body}
    echo @@umount
    if 9umount "$mnt"; then echo 9umount ok; else echo "9umount failed rc=$?"; fi
    grep -q " $mnt " /proc/mounts && echo 'still mounted'
    echo @@end
else
    echo "@@mountfailed rc=$?"
fi
"""
    return f"""
echo '{VARIANT_BEGIN}{name}'
echo "@@@uptime $(cut -d' ' -f1 /proc/uptime)"
mkdir -p {mnt}
chown -R {GUEST_UID}:{GUEST_UID} {GUEST_HOME}
nc -l -p {NINEMOUNT_LOOPBACK_PORT} -e nc {GUEST_SERVER_ADDR} {port} &
relay=$!
i=0
while ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q '{listening}' && [ $i -lt 100 ]; do
    sleep 0.05
    i=$((i + 1))
done
cat > /tmp/9mount-{index}.sh <<'EOF_9MOUNT'
{user_script}
EOF_9MOUNT
su - {GUEST_USER} -c 'sh /tmp/9mount-{index}.sh'
kill $relay 2>/dev/null
echo "@@@uptime $(cut -d' ' -f1 /proc/uptime)"
echo '{VARIANT_END}{name}'
"""


def guest_timeline(output: str) -> str:
    """When (guest uptime, s) each variant started and ended: where a slow boot went."""
    marks = re.findall(r"^@@@uptime (\S+)$", output, re.MULTILINE)
    return " ".join(marks)


def split_variants(output: str) -> dict[str, str]:
    """{variant name: what it printed}, from one boot's output."""
    found: dict[str, str] = {}
    for match in re.finditer(
        rf"^{VARIANT_BEGIN}(.+)\n(.*?)^{VARIANT_END}\1$", output, re.MULTILINE | re.DOTALL
    ):
        found[match.group(1)] = match.group(2)
    return found


def sections(output: str) -> dict[str, list[str]]:
    """{section: lines} for the @@name markers of one variant's output."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@@"):  # the harness's own markers (uptime), not a section
            continue
        if line.startswith("@@"):
            current = found.setdefault(line[2:], [])
        elif current is not None:
            current.append(line)
    return found


def guest_listing(parts: dict[str, list[str]]) -> Listing:
    hashes: dict[str, str] = {}
    for line in parts.get("sha", []):
        digest, _, path = line.partition("  ")
        hashes[path] = digest
    listing: Listing = {}
    for line in parts.get("stat", []):
        kind, size, path = line.split("|", 2)
        if kind == "directory":
            listing[path] = ("d", 0, "")
        else:
            listing[path] = ("f" if "regular" in kind else kind, int(size), hashes.get(path, ""))
    return listing


def negotiated(mount_line: str) -> str:
    """The dialect the kernel agreed on, from its /proc/mounts line.

    The kernel prints the dialect it ended up with after Tversion, not the one
    asked for (p9_client_version sets it from Rversion; p9_show_client_options in
    net/9p/client.c prints it): ``noextend`` for 9P2000, ``version=9p2000.u`` for
    .u, nothing for its default .L, whose sign is instead ``access=client`` (the
    kernel turns that access mode off for any other dialect).  Anything else is
    "unknown", so a missing line cannot pass for .L.
    """
    fields = mount_line.split()
    opts = fields[3].split(",") if len(fields) > 3 else []
    if "noextend" in opts:
        return "9P2000"
    if "version=9p2000.u" in opts:
        return "9P2000.u"
    if "access=client" in opts:
        return "9P2000.L"
    return "unknown"


# --- diod, the reference server the harness was validated against --------------------


def diod_path() -> str | None:
    """diod lives in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("diod")
    if found is None and os.access("/usr/sbin/diod", os.X_OK):
        found = "/usr/sbin/diod"
    return found


@contextmanager
def running_diod(directory: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Serve DIRECTORY with diod on 127.0.0.1:PORT (mount it with aname=DIRECTORY).

    Not used by the suite: it is how the harness was shown to work against a 9P2000.L
    server nobody here wrote, kept so a doubt about the harness can be settled the
    same way (boot ``run_guest_full(port, script)`` against it by hand).  -n: no munge
    auth; -S -U root: squash every attach to root, because the kernel attaches as
    "nobody" with n_uname 0 unless told otherwise and diod refuses that mix.  diod
    exports read-write, so a script that tries writes changes DIRECTORY.  Checked by
    hand on 2026-11-27: the 9p2000.L variant's listing matched the host tree.
    """
    diod = diod_path()
    if diod is None:
        raise QemuUnavailable("diod not installed (Debian package diod)")
    argv = [diod, "-f", "-n", "-S", "-U", "root", "-L", "stderr"]
    argv += ["-l", f"127.0.0.1:{port}", "-e", str(directory)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"diod did not listen (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # by its own PID
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
