"""Start-up and lifecycle: what a user meets before the mount serves.

Every refusal is checked with a real mount attempt against the real engine:
the command returns, exit 1, one line on stderr naming what is wrong, and
nothing is mounted. Cases where the daemon could block on its own mount run
in the foreground, so that even a regression cannot leave a hung daemon we
cannot end by PID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    Engine,
    dockerfs_command,
    in_private_mount_namespace,
    require,
    require_fuse,
    start_mount,
    stop_mount,
    wait_for_start_line,
)
from support.waiting import wait_until

from dockerfs_fuse.lifecycle.config import MountConfig, MountError
from dockerfs_fuse.lifecycle.daemon_log import state_log_path, syslog_reachable
from dockerfs_fuse.lifecycle.paths import passes_through
from dockerfs_fuse.lifecycle.preflight import check_fuse_options, security_warnings

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

REPO = Path(__file__).resolve().parent.parent
IMG = "busybox:latest"


# -- helpers -------------------------------------------------------------------------


def refused(
    args: list[str],
    *,
    mountpoint: Path,
    want: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    own_namespace: bool = False,
) -> str:
    """Run dockerfs-fuse; it must return (60 s bound, not a timing claim), exit 1,
    print one line naming `want` and nothing else, and mount nothing.
    `own_namespace`: the command mounts in a mount namespace of its own, so
    the mountpoint is never touched from ours."""
    before = mounts_at(mountpoint)
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        where = (
            "in its namespace" if own_namespace else f"mounted: {mounts_at(mountpoint) > before}"
        )
        abandon(mountpoint, proc, own_namespace)
        pytest.fail(f"dockerfs-fuse did not return within 60 s ({where})")
    was_mounted = mounts_at(mountpoint) > before
    if was_mounted:
        abandon(mountpoint, proc, own_namespace)
    assert not was_mounted, f"mounted despite: {err}"
    assert proc.returncode == 1, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dockerfs-fuse: ") and want in lines[0], err
    assert out == ""
    return lines[0]


def unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_at(path: Path) -> int:
    """From mountinfo, never from the path: a stat could wait on a blocked daemon."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return sum(unescape(line.split()[4]) == str(path) for line in f)


def mounted(path: Path) -> bool:
    return mounts_at(path) > 0


def unmount_detached(mp: Path, within: float) -> None:
    """Unmount a daemon that detached (no process of ours to stop) and see it go;
    `within` is a bound, not a timing claim."""
    subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
    wait_until(lambda: not mounted(mp), "the unmount", within)


FUSECTL = Path("/sys/fs/fuse/connections")


def abort_fuse_connection(pid: int, mountpoint: Path) -> None:
    """Abort the FUSE connection of the mount at `mountpoint` as process `pid`
    sees it: a daemon stuck in a request to its own mount survives SIGKILL
    (a zombie whose thread still waits) and blocks `umount -f`; only this frees it."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text(errors="replace").splitlines()
    except OSError:
        return
    minors = [
        line.split()[2].split(":")[1]
        for line in lines
        if unescape(line.split()[4]) == str(mountpoint) and " - fuse" in line
    ]
    if not minors:
        return
    ours = "fusectl" not in Path("/proc/self/mountinfo").read_text()
    if ours:
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True)
    for minor in minors:
        with contextlib.suppress(OSError):
            (FUSECTL / minor / "abort").write_text("1")
    if ours:
        subprocess.run(["umount", str(FUSECTL)], capture_output=True)


def abandon(mountpoint: Path, proc: subprocess.Popen[str], own_namespace: bool = False) -> None:
    """Undo a mount that should not exist, even one whose daemon waits on itself
    (so never `umount -f`, which then blocks too): abort its FUSE connection,
    kill the daemon by PID, and lazily unmount what is left in our namespace."""
    if proc.poll() is None:
        abort_fuse_connection(proc.pid, mountpoint)
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=30)
    if not own_namespace:  # a namespace of its own ends with its last process
        unmount = ["fusermount3", "-u", "-z", str(mountpoint)]
        subprocess.run(unmount, capture_output=True, timeout=30)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "MAKE", "MFLAGS"))}
    env.update(extra)
    return env


@pytest.fixture
def mp(tmp_path: Path) -> Path:
    require_fuse()
    path = tmp_path / "m"
    path.mkdir()
    return path


# -- pure checks ------------------------------------------------------------------------


def test_passes_through_follows_symlinks_out_and_back(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (top / "out").symlink_to(tmp_path / "outside")  # inside, pointing out: still walked
    (tmp_path / "in").symlink_to(top / "sub")  # outside, pointing in
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert passes_through(str(top / "sub" / "x.sock"), str(top))
    assert passes_through(str(top / "out" / "x.sock"), str(top))
    assert passes_through(str(tmp_path / "in" / "x.sock"), str(top))
    assert passes_through(str(top / "missing" / "deeper" / "x"), str(top))
    assert passes_through(str(top), str(top))
    assert not passes_through(str(tmp_path / "outside" / "x.sock"), str(top))
    assert not passes_through(str(tmp_path / "topx" / "x.sock"), str(top))
    assert not passes_through(str(top / ".." / "outside"), str(top / "sub"))
    assert not passes_through(str(tmp_path / "loop" / "x"), str(top))  # ELOOP, no wait
    assert passes_through("/run/docker.sock", "/")


@pytest.mark.parametrize(
    ("options", "want"),
    [
        (["bogusopt"], "-o bogusopt: unknown FUSE mount option"),
        (["ro,bogus=1"], "-o bogus=1: unknown"),
        (["max_read"], "max_read takes a number"),
        (["max_read=x"], "max_read takes a number"),
        (["fsname="], "fsname takes a value"),
        (["ro=1"], "ro takes no value"),
        (["allow_other", "allow_root"], "exclude each other"),
    ],
)
def test_fuse_options_are_checked(options: list[str], want: str) -> None:
    with pytest.raises(MountError, match=re.escape(want)):
        check_fuse_options(options)


def test_known_fuse_options_pass() -> None:
    check_fuse_options(["ro,nosuid,nodev,noatime", "allow_other", "max_read=131072,fsname=x"])


# -- item 1: empty MOUNTPOINT, and paths under the mountpoint ---------------------------


@pytest.mark.parametrize("foreground", [False, True])
def test_empty_mountpoint_is_refused(engine: Engine, mp: Path, foreground: bool) -> None:
    flags = ["-f"] if foreground else []
    refused(
        dockerfs_command(*flags, "-H", engine.host, ""),
        mountpoint=mp,
        cwd=mp,  # what "" used to mean: the current directory
        want="MOUNTPOINT is empty",
    )


@pytest.fixture
def socket_in_mp(engine: Engine, mp: Path) -> Path:
    """The engine's socket, reached through the mountpoint (a symlink inside it:
    its real path is outside, but the lookup still goes through the mount)."""
    link = mp / "docker.sock"
    link.symlink_to(engine.dockerd.socket)
    return link


def test_docker_socket_under_mountpoint_by_host(
    engine: Engine, mp: Path, socket_in_mp: Path
) -> None:
    line = refused(
        dockerfs_command("-f", "-H", f"unix://{socket_in_mp}", str(mp)),
        mountpoint=mp,
        want=f"the Docker socket {socket_in_mp} is reached through the mountpoint {mp}",
    )
    assert "block on its own mount" in line


def test_docker_socket_under_mountpoint_by_docker_host(
    engine: Engine, mp: Path, socket_in_mp: Path
) -> None:
    refused(
        dockerfs_command("-f", str(mp)),
        mountpoint=mp,
        env=clean_env(DOCKER_HOST=f"unix://{socket_in_mp}"),
        want=f"the Docker socket {socket_in_mp} is reached through the mountpoint",
    )


def test_relative_mountpoint_holding_the_socket(
    engine: Engine, mp: Path, socket_in_mp: Path
) -> None:
    refused(
        dockerfs_command("-f", "-H", f"unix://{socket_in_mp}", "."),
        mountpoint=mp,
        cwd=mp,
        want="the Docker socket",
    )


def _same_device_as_root(tmp_path: Path) -> Path:
    """A scratch directory on the root filesystem: bound over the socket's
    directory, it leaves a directory os.path.ismount does not call a mount
    point (as /run is on systems without a tmpfs there), so the check under
    test is the one that speaks."""
    root_dev = os.stat("/").st_dev
    for base in (tmp_path, Path("/var/tmp"), Path("/tmp"), Path("/root")):
        if base.is_dir() and os.stat(base).st_dev == root_dev:
            scratch = base / f"dfs-run-{os.getpid()}-{time.monotonic_ns()}"
            scratch.mkdir()
            return scratch
    require(False, "no scratch directory on the root filesystem")
    raise AssertionError  # unreachable


def test_default_docker_socket_under_mountpoint(engine: Engine, tmp_path: Path) -> None:
    """No -H, no DOCKER_HOST, no context: the docker CLI's default,
    /var/run/docker.sock (on Debian /var/run is a link to /run). In a private
    mount namespace, that directory holds only a link to the engine's socket,
    and it is the mountpoint."""
    require_fuse()
    require(shutil.which("unshare") is not None, "unshare missing (util-linux)")
    run_dir = os.path.realpath("/var/run")
    scratch = _same_device_as_root(tmp_path)
    home = tmp_path / "home"  # no ~/.docker: no context
    home.mkdir()
    script = 'mount --bind "$1" "$2" && ln -s "$3" "$2/docker.sock" && shift 3 && exec "$@"'
    try:
        refused(
            in_private_mount_namespace(
                script,
                str(scratch),
                run_dir,
                str(engine.dockerd.socket),
                *dockerfs_command("-f", run_dir),
            ),
            mountpoint=Path(run_dir),
            own_namespace=True,
            env=clean_env(HOME=str(home)),
            want=f"the Docker socket /var/run/docker.sock is reached through the mountpoint "
            f"{run_dir}",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_log_file_under_mountpoint(engine: Engine, mp: Path) -> None:
    refused(
        dockerfs_command("-f", "-H", engine.host, "--log-file", str(mp / "d.log"), str(mp)),
        mountpoint=mp,
        want=f"--log-file {mp / 'd.log'} is reached through the mountpoint {mp}",
    )


def test_9p_socket_under_mountpoint(engine: Engine, mp: Path) -> None:
    refused(
        dockerfs_command("-f", "-H", engine.host, "--9p", f"unix!{mp}/9p.sock", str(mp)),
        mountpoint=mp,
        want=f"--9p socket {mp}/9p.sock is reached through the mountpoint {mp}",
    )


# -- items 8 and 9: every argument checked before Docker is asked or anything mounted ---


BAD_ARGUMENTS = [
    (["-o", "bogusopt"], "-o bogusopt: unknown option"),
    (["-o", "ro,max_read=lots"], "-o max_read=lots: max_read takes a number"),
    (["--9p", "bad dial"], "--9p: bad dial string 'bad dial'"),
    (["--9p", "tcp!localhost!99999"], "--9p: bad port in dial string 'tcp!localhost!99999'"),
    (["--9p", "unix!/missing/dir/sock"], "--9p unix!/missing/dir/sock: directory /missing/dir"),
    (["--log-file", "/missing/dir/d.log"], "--log-file /missing/dir/d.log: directory /missing/dir"),
]


@pytest.mark.parametrize(("args", "want"), BAD_ARGUMENTS)
@pytest.mark.parametrize("foreground", [False, True])
def test_bad_argument_is_one_line_before_mounting(
    engine: Engine, mp: Path, args: list[str], want: str, foreground: bool
) -> None:
    flags = ["-f"] if foreground else []
    refused(dockerfs_command(*flags, "-H", engine.host, *args, str(mp)), mountpoint=mp, want=want)


@pytest.mark.parametrize(("args", "want"), BAD_ARGUMENTS)
def test_bad_argument_is_found_before_docker_is_asked(
    tmp_path: Path, mp: Path, args: list[str], want: str
) -> None:
    # With no engine there, a check made after asking Docker would say "cannot reach Docker".
    dead = f"unix://{tmp_path}/dead.sock"
    refused(dockerfs_command("-H", dead, *args, str(mp)), mountpoint=mp, want=want)


def test_log_file_that_cannot_be_opened_for_append(
    engine: Engine, mp: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    refused(
        dockerfs_command("-H", engine.host, "--log-file", str(directory), str(mp)),
        mountpoint=mp,
        want=f"--log-file {directory}: cannot open for append: Is a directory",
    )


def test_9p_port_in_use_is_found_before_mounting(engine: Engine, mp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        refused(
            dockerfs_command("-H", engine.host, "--9p", f"tcp!127.0.0.1!{port}", str(mp)),
            mountpoint=mp,
            want=f"--9p tcp!127.0.0.1!{port}: cannot listen there: Address already in use",
        )


def test_9p_path_that_is_not_a_socket(engine: Engine, mp: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain-file"
    plain.write_text("keep me\n")
    refused(
        dockerfs_command("-H", engine.host, "--9p", f"unix!{plain}", str(mp)),
        mountpoint=mp,
        want=f"{plain} exists and is not a socket",
    )
    assert plain.read_text() == "keep me\n"


def test_libfuse_refusal_is_one_line(engine: Engine, mp: Path) -> None:
    """An option libfuse knows but cannot honour here (blkdev needs a block
    device): libfuse's own message, caught, in our one line."""
    refused(
        dockerfs_command("-f", "-H", engine.host, "-o", "blkdev", str(mp)),
        mountpoint=mp,
        want=f"cannot mount {mp}: fuse: ",
    )


def where_the_log_goes(env: dict[str, str] | None = None) -> str:
    """What a detached start without --log-file prints: nothing when syslog
    listens, else the one line naming the file it logs to instead."""
    if syslog_reachable():
        return ""
    path = state_log_path(os.environ if env is None else env)
    return f"dockerfs-fuse: no syslog here (/dev/log): logging to {path}\n"


@pytest.mark.parametrize("log_file", [True, False])
def test_detached_start_prints_nothing(
    engine: Engine, mp: Path, tmp_path: Path, log_file: bool
) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    log = tmp_path / "d.log"
    args = ["--log-file", str(log)] if log_file else []
    res = subprocess.run(
        dockerfs_command("-H", engine.host, *args, str(mp)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert res.returncode == 0, res.stderr
        assert (res.stdout, res.stderr) == ("", "" if log_file else where_the_log_goes())
        assert cid in os.listdir(mp)
        if log_file:  # what the terminal did not get, the log did
            assert f"at {engine.host}, mounted at {mp}" in log.read_text()
    finally:
        unmount_detached(mp, within=15)


def test_foreground_start_logs_the_engine(engine: Engine, tmp_path: Path) -> None:
    m = start_mount(engine.host, tmp_path / "fg")
    try:
        wait_for_start_line(m, engine.host)
    finally:
        stop_mount(m)


# -- what a detached start tells the terminal, and where its log goes --------------------------


def test_no_syslog_logs_under_xdg_state_home_and_says_so(
    engine: Engine, mp: Path, tmp_path: Path
) -> None:
    """No syslog listening (in a mount namespace of its own, /dev/log is
    covered if this machine has one): the daemon logs to
    $XDG_STATE_HOME/dockerfs-fuse/dockerfs-fuse.log, or ~/.local/state/...,
    and the start says so in one line."""
    require(shutil.which("unshare") is not None, "unshare missing (util-linux)")
    state = tmp_path / "state"
    home = tmp_path / "home"
    home.mkdir()
    script = (
        '[ ! -e /dev/log ] || mount --bind /dev/null /dev/log || exit 99; "$@" || exit $?; '
        'ls -1 "$MP" > "$OUT"; fusermount3 -u "$MP"'
    )
    for env, log in [
        (clean_env(XDG_STATE_HOME=str(state)), state / "dockerfs-fuse" / "dockerfs-fuse.log"),
        (
            {**clean_env(HOME=str(home)), "XDG_STATE_HOME": ""},
            home / ".local" / "state" / "dockerfs-fuse" / "dockerfs-fuse.log",
        ),
    ]:
        cid = engine.run(IMG, "sleep", "1d")
        listing = tmp_path / "listing"
        res = subprocess.run(
            in_private_mount_namespace(script, *dockerfs_command("-H", engine.host, str(mp))),
            env={**env, "MP": str(mp), "OUT": str(listing)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert res.stderr == f"dockerfs-fuse: no syslog here (/dev/log): logging to {log}\n"
        assert cid in listing.read_text().split()
        assert os.stat(log.parent).st_mode & 0o777 == 0o700
        # Timestamped, with the daemon's PID: one file serves every mount.
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ dockerfs-fuse\[\d+\]: INFO "
        started = f"^{stamp}.*mounted at {re.escape(str(mp))}$"
        assert re.search(started, log.read_text(), re.M), log.read_text()
        assert not mounted(mp)


def test_security_warning_reaches_the_terminal_before_detaching(
    engine: Engine, mp: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dial = f"tcp!127.0.0.1!{port}"
    log = tmp_path / "d.log"
    res = subprocess.run(
        dockerfs_command(
            "-H", engine.host, "--9p", dial, "--9p-allow-control", "--log-file", str(log), str(mp)
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert res.returncode == 0, res.stderr
        lines = res.stderr.splitlines()
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith(f"dockerfs-fuse: warning: --9p-allow-control on {dial}: ")
        assert "every local user" in lines[0] and "control Docker" in lines[0]
        # The log has it too, as a warning, not as information.
        assert (
            f"WARNING dockerfs_fuse.lifecycle.mount: --9p-allow-control on {dial}"
            in log.read_text()
        )
    finally:
        unmount_detached(mp, within=30)


def test_which_settings_are_warned_about() -> None:
    def warned(*dials: str, control: bool = False) -> list[str]:
        return security_warnings(MountConfig("/m", ninep=list(dials), ninep_allow_control=control))

    assert warned("tcp!localhost!9999") == []
    assert warned("unix!/run/user/1000/9p.sock", control=True) == []  # 0600: only us
    assert ["every local user" in w for w in warned("tcp!127.0.0.1!9999", control=True)] == [True]
    (exposed,) = warned("tcp!0.0.0.0!9999")
    assert "reachable from other machines" in exposed
    assert len(warned("tcp!*!9999", control=True)) == 2


# -- arguments a user gets wrong ---------------------------------------------------------------


def test_an_extra_argument_is_a_usage_error(engine: Engine, mp: Path, tmp_path: Path) -> None:
    """`-H URL MNT extra`: not "docker context 'MNT' not found", but a usage
    error, one line and exit 2 as argparse's, before anything is asked or mounted."""
    res = subprocess.run(
        dockerfs_command("-H", engine.host, str(mp), "extra"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    said = f"dockerfs-fuse: too many arguments: {mp} extra: give one MOUNTPOINT; "
    assert lines[0].startswith(said), lines[0]
    assert "not found" not in lines[0]
    assert not mounted(mp) and not mounted(tmp_path / "extra")


def test_usage_errors_are_one_line() -> None:
    res = subprocess.run(dockerfs_command(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "MOUNTPOINT" in res.stderr, res.stderr


@pytest.mark.parametrize("foreground", [False, True])
def test_nonempty_mountpoint_is_refused(engine: Engine, mp: Path, foreground: bool) -> None:
    """A mount would hide the files there: refused, with the way to insist."""
    (mp / "notes.txt").write_text("mine\n")
    flags = ["-f"] if foreground else []
    line = refused(
        dockerfs_command(*flags, "-H", engine.host, str(mp)),
        mountpoint=mp,
        want=f"mountpoint {mp} is not empty ('notes.txt'",
    )
    assert line.endswith("empty it, or mount over it anyway with -o nonempty")
    assert (mp / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("spelled", [["-o", "nonempty"], ["--nonempty"]])
def test_nonempty_mounts_over_files_when_asked(
    engine: Engine, tmp_path: Path, spelled: list[str]
) -> None:
    mp = tmp_path / "full"
    mp.mkdir()
    (mp / "notes.txt").write_text("mine\n")
    cid = engine.run(IMG, "sleep", "1d")
    m = start_mount(engine.host, mp, *spelled)
    try:
        listed = os.listdir(mp)
        assert cid in listed and "notes.txt" not in listed
    finally:
        stop_mount(m)
    assert (mp / "notes.txt").read_text() == "mine\n"


# -- a dead mount, or one that does not answer ----------------------------------------------


def test_dead_mount_is_named_with_its_cure(engine: Engine, tmp_path: Path) -> None:
    mp = tmp_path / "dead"
    m = start_mount(engine.host, mp)
    try:
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(15)
        with pytest.raises(OSError) as err:
            os.listdir(mp)
        assert err.value.errno == errno.ENOTCONN
        refused(
            dockerfs_command("-H", engine.host, str(mp)),
            mountpoint=mp,  # its dead mount stays; nothing new on top
            want=(
                f"{mp}: dead dockerfs-fuse mount (Transport endpoint is not connected); "
                f"clear it with: fusermount3 -u {mp}"
            ),
        )
        # The cure it names works, and then the mount does.
        subprocess.run(["fusermount3", "-u", str(mp)], check=True, capture_output=True)
        m2 = start_mount(engine.host, mp)
        try:
            assert os.listdir(mp) == [c["Id"] for c in engine.containers()]
        finally:
            stop_mount(m2)
    finally:
        stop_mount(m)


def test_hung_mount_is_named_not_waited_on(engine: Engine, tmp_path: Path) -> None:
    mp = tmp_path / "hung"
    m = start_mount(engine.host, mp)
    try:
        m.proc.send_signal(signal.SIGSTOP)  # alive, but answers nothing
        refused(
            dockerfs_command("-H", engine.host, str(mp)),
            mountpoint=mp,
            want=f"{mp}: the mount there does not answer; clear it with: fusermount3 -u -z {mp}",
        )
    finally:
        m.proc.send_signal(signal.SIGCONT)
        stop_mount(m)


# -- item 12: make run, with and without a reachable engine ----------------------------------


def make_run(mountpoint: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    require(shutil.which("make") is not None, "make missing")
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "run", f"MOUNTPOINT={mountpoint}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_make_run_mounts_a_reachable_engine(engine: Engine, tmp_path: Path) -> None:
    require_fuse()
    cid = engine.run(IMG, "sleep", "1d")
    mp = tmp_path / "run"
    env = clean_env(DOCKER_HOST=engine.host, HOME=str(tmp_path))
    res = make_run(mp, env)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stderr == where_the_log_goes(env)
        assert res.stdout.strip() == f"mounted at {mp}; unmount with: fusermount3 -u {mp}"
        assert os.listdir(mp) == [c["Id"] for c in engine.containers()]
        assert cid in os.listdir(mp)
    finally:
        unmount_detached(mp, within=15)


@pytest.fixture
def demo_leftovers() -> Iterator[list[tuple[int, Path]]]:
    """Whatever private dockerd `make run` started, ended by its PID if the test did not."""
    started: list[tuple[int, Path]] = []
    yield started
    for pid, base in started:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-R", "-l", str(base / "exec")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(600)  # may install docker.io, then starts a dockerd
def test_make_run_without_engine_falls_back_to_the_demo(
    tmp_path: Path, demo_leftovers: list[tuple[int, Path]]
) -> None:
    require_fuse()
    require(os.geteuid() == 0, "the demo's private dockerd needs root")
    require(shutil.which("dockerd") is not None, "dockerd missing (Debian docker.io)")
    mp = tmp_path / "run"
    dead = tmp_path / "dead.sock"
    res = make_run(mp, clean_env(DOCKER_HOST=f"unix://{dead}", HOME=str(tmp_path)))
    out = res.stdout
    pid_match = re.search(r"kill (\d+);", out)
    base_match = re.search(r"rm -rf (\S+)", out)
    if pid_match and base_match:
        demo_leftovers.append((int(pid_match.group(1)), Path(base_match.group(1))))
    try:
        assert res.returncode == 0, out + res.stderr
        # dockerfs-fuse --ping's one line, then the Makefile's: why, and what instead.
        said = res.stderr.splitlines()[:2]
        assert said[0].startswith(f"dockerfs-fuse: cannot reach Docker at unix://{dead}: ")
        assert said[1].startswith("no Docker engine answers: mounting a private one"), said
        assert pid_match and base_match, out
        assert f"mounted a private Docker engine (3 containers) at {mp}" in out
        names = sorted((mp / cid / "Names" / "0").read_text() for cid in os.listdir(mp))
        assert names == ["/db\n", "/web\n", "/worker\n"]
    finally:
        # Stop both exactly as the printed instructions say.
        stop = out[out.index("stop both") :].split("\n", 1)[1] if "stop both" in out else ""
        if stop:
            subprocess.run(["sh", "-c", stop.replace("\\\n", "")], timeout=120, check=False)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    assert not mounted(mp)
    pid, base = demo_leftovers[0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not base.exists()
    assert str(base) not in Path("/proc/self/mountinfo").read_text()


def ping(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dockerfs_command("--ping", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_ping_says_one_line_and_fails_with_no_engine(tmp_path: Path) -> None:
    dead = f"unix://{tmp_path}/dead.sock"
    res = ping(env=clean_env(DOCKER_HOST=dead, HOME=str(tmp_path)))
    assert (res.returncode, res.stdout) == (1, "")
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f"dockerfs-fuse: cannot reach Docker at {dead}: "), res.stderr


def test_ping_passes_with_an_engine(engine: Engine, tmp_path: Path) -> None:
    res = ping(env=clean_env(DOCKER_HOST=engine.host, HOME=str(tmp_path)))
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert re.fullmatch(rf"local: Docker \S+ at {re.escape(engine.host)}\n", res.stdout)


def test_ping_checks_every_engine_it_is_given(engine: Engine, tmp_path: Path) -> None:
    """Unlike a mount of several (where one not answering is logged), --ping
    fails for any: each would be a directory answering EIO."""
    env = clean_env(HOME=str(tmp_path))
    res = ping("-H", f"a={engine.host}", "-H", f"b={engine.host}", env=env)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert [line.split(":")[0] for line in res.stdout.splitlines()] == ["a", "b"]
    dead = f"unix://{tmp_path}/dead.sock"
    res = ping("-H", f"a={engine.host}", "-H", f"b={dead}", env=env)
    assert (res.returncode, res.stdout) == (1, ""), res.stdout
    assert res.stderr.startswith(f"dockerfs-fuse: cannot reach Docker at {dead}: "), res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr


def test_ping_takes_no_mountpoint(tmp_path: Path) -> None:
    res = ping(str(tmp_path), env=clean_env(HOME=str(tmp_path)))
    assert res.returncode == 2
    assert res.stderr.startswith("dockerfs-fuse: --ping takes no SOURCE or MOUNTPOINT"), res.stderr


# A library's warning at start-up, as cryptography's "DSA is deprecated" is when asyncssh
# loads: raised while the mount is being checked, after logging is set up.
WARNING_AT_STARTUP = """
import sys, warnings
from dockerfs_fuse.lifecycle import cli
checked = cli.check_config
def check_config(config):
    warnings.warn("DSA is deprecated", UserWarning, stacklevel=1)
    return checked(config)
cli.check_config = check_config
sys.exit(cli.main(sys.argv[1:]))
"""


def test_library_warnings_never_reach_the_terminal(mp: Path) -> None:
    # Nothing listens on port 1 of loopback: the start-up error is one line, the warning
    # is not printed at all (refused() wants exactly one line on stderr).
    args = [sys.executable, "-c", WARNING_AT_STARTUP, "-f", "-H", "tcp://127.0.0.1:1", str(mp)]
    line = refused(args, mountpoint=mp, want="cannot reach Docker", env=clean_env())
    assert "DSA" not in line


def test_library_warnings_are_logged_at_debug(mp: Path) -> None:
    args = [sys.executable, "-c", WARNING_AT_STARTUP, "-d", "-H", "tcp://127.0.0.1:1", str(mp)]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env=clean_env(), stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1, proc.stderr
    logged = [line for line in proc.stderr.splitlines() if "DSA is deprecated" in line]
    assert len(logged) == 1, proc.stderr
    assert "DEBUG dockerfs_fuse.warnings" in logged[0] and "UserWarning" in logged[0]
