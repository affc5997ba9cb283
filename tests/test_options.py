"""The -o table and the command line that folds it in (pure: no mount)."""

from __future__ import annotations

import os
import pwd

import pytest

from dockerfs_fuse.lifecycle import cli, options
from dockerfs_fuse.lifecycle.options import OptionError


def test_ours_become_long_options() -> None:
    args = cli.parse_args(
        [
            "-o",
            "all,host=a=unix:///a.sock,context=prod",
            "-o",
            "9p=tcp!localhost!0",
            "/mnt",
            "-o",
            "9p_allow_control,log_file=/tmp/x.log,debug,foreground",
        ]
    )
    assert args.all and args.debug and args.foreground and args.ninep_allow_control
    assert args.host == ["a=unix:///a.sock"]
    assert args.context == ["prod"]
    assert args.ninep == ["tcp!localhost!0"]
    assert args.log_file == "/tmp/x.log"
    assert args.options == []
    assert args.mountpoint == "/mnt" and args.source is None


def test_repeatable_options_keep_order_with_their_long_spelling() -> None:
    args = cli.parse_args(["-H", "unix:///one", "-o", "host=unix:///two,host=b=ssh://h", "/m"])
    assert args.host == ["unix:///one", "unix:///two", "b=ssh://h"]


@pytest.mark.parametrize(
    ("source", "host", "context"),
    [
        ("unix:///run/docker.sock", ["unix:///run/docker.sock"], None),
        ("ssh://root@box", ["ssh://root@box"], None),
        ("localhost:2375", ["localhost:2375"], None),
        ("prod", None, ["prod"]),
        ("default", None, None),
    ],
)
def test_mount_fuse3_convention(
    source: str, host: list[str] | None, context: list[str] | None
) -> None:
    # exactly what mount.fuse3 runs: TYPE SOURCE MOUNTPOINT -o OPTS
    args = cli.parse_args([source, "/mnt/docker", "-o", "rw,noauto,all,allow_other,dev,suid"])
    assert args.mountpoint == "/mnt/docker"
    assert args.host == host and args.context == context
    assert args.all
    assert args.options == ["rw", "allow_other", "dev", "suid"]
    assert args.fsname == source


def test_source_goes_before_other_engines() -> None:
    args = cli.parse_args(["-o", "host=x=unix:///x", "unix:///y", "/m"])
    assert args.host == ["unix:///y", "x=unix:///x"]


def test_options_may_come_between_positionals() -> None:
    args = cli.parse_args(["prod", "-o", "all", "/m", "-f"])
    assert args.context == ["prod"] and args.mountpoint == "/m" and args.all and args.foreground


def test_everything_mount_and_fstab_pass_is_accepted() -> None:
    words = (
        "defaults,auto,noauto,user,nouser,users,owner,group,_netdev,nofail,user=alice,"
        "comment=systemd.automount,x-systemd.automount,x-systemd.idle-timeout=60,x-gvfs-show"
    )
    parsed = options.parse([words])
    assert parsed.fuse == [] and parsed.ours == {}
    assert len(parsed.ignored) == len(words.split(","))


def test_kernel_flags_and_fuse_options_go_to_libfuse() -> None:
    given = "ro,nosuid,nodev,noexec,noatime,allow_other,allow_root,max_read=131072,fsname=x"
    assert options.parse([given]).fuse == given.split(",")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("bogus", "-o bogus: unknown option"),
        ("all=1", "-o all takes no value"),
        ("host", "-o host needs a value (host=[NAME=]URL)"),
        ("host=", "-o host= needs a value"),
        ("allow_other=yes", "-o allow_other takes no value"),
        ("max_read", "-o max_read needs a value"),
    ],
)
def test_bad_options_are_one_line(given: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        options.parse(["all", given])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unknown_option_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["-o", "allow_others", "/m"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert (
        err == "dockerfs-fuse: -o allow_others: unknown option (dockerfs-fuse --help lists them)\n"
    )


def test_helper_options_refused_when_run_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    for given in ("drop_privileges", "setuid=nobody-else-at-all"):
        with pytest.raises(SystemExit):
            cli.parse_args(["-o", given, "/m"])
        assert "only mount.fuse3" in capsys.readouterr().err
    # already that user: nothing to switch
    me = pwd.getpwuid(os.getuid()).pw_name
    assert cli.parse_args(["-o", f"setuid={me}", "/m"]).options == []


def test_help_lists_every_o_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    out = capsys.readouterr().out
    for opt in options.table():
        assert opt.name in out, opt.name


def test_fsname_is_the_source_escaped() -> None:
    from dockerfs_fuse.lifecycle.config import MountConfig
    from dockerfs_fuse.lifecycle.mount import fuse_options

    opts = fuse_options(MountConfig("/m", fsname="ssh://a,b", fuse_options=["ro"]))
    assert "fsname=ssh://a\\,b" in opts and "subtype=dockerfs-fuse" in opts and "ro" in opts
    mine = fuse_options(MountConfig("/m", fuse_options=["fsname=mine,subtype=other"]))
    assert {o for o in mine if o.startswith(("fsname", "subtype"))} == {
        "fsname=mine",
        "subtype=other",
    }


@pytest.mark.parametrize(
    ("argv", "view"),
    [
        (["/m"], "containers"),
        (["--view=engine", "/m"], "engine"),
        (["-o", "view=engine", "/m"], "engine"),
        (["--view", "containers", "/m"], "containers"),
        (["--swarm", "/m"], "swarm"),
        (["-o", "swarm", "/m"], "swarm"),
        (["--view=swarm", "--swarm", "/m"], "swarm"),
    ],
)
def test_view_and_its_swarm_alias(argv: list[str], view: str) -> None:
    assert cli.view_of(cli.parse_args(argv)) == view


def test_unknown_view_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["-o", "view=images", "/m"])
    assert info.value.code == 1
    assert "-o view=images: no such view (one of containers, engine, swarm)" in (
        capsys.readouterr().err
    )


def test_swarm_with_another_view_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--swarm", "-o", "view=engine", "/m"])
    assert info.value.code == 2
    assert "--swarm is --view=swarm: not with --view=engine" in capsys.readouterr().err
