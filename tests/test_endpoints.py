"""Endpoint resolution: -H, --context and the docker CLI's order, in temporary homes.

The environment is always passed explicitly, so nothing here depends on the
machine's own DOCKER_HOST or ~/.docker. The last tests ask the real docker
CLI the same questions and compare answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require

from dockerfs_fuse.docker.endpoints import (
    DEFAULT_HOST,
    DEFAULT_TLS_HOST,
    TLS,
    Endpoint,
    EndpointError,
    config_dir,
    context_id,
    default_endpoint,
    host_endpoint,
    resolve,
)

TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


def only(found: list[Endpoint]) -> Endpoint:
    """The one engine resolved, where the command line names exactly one."""
    [ep] = found
    return ep


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return {"HOME": str(home)}


def write_context(
    cfg: Path,
    name: str,
    host: str | None,
    skip_verify: bool = False,
    tls_files: tuple[str, ...] = (),
) -> Path:
    """A context as `docker context create` stores it; returns its TLS directory."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = cfg / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    docker: dict[str, object] = {"SkipTLSVerify": skip_verify}
    if host is not None:
        docker["Host"] = host
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": docker}})
    )
    tls = cfg / "contexts" / "tls" / digest / "docker"
    for f in tls_files:
        tls.mkdir(parents=True, exist_ok=True)
        (tls / f).write_text(f"{f}\n")
    return tls


def set_current(cfg: Path, name: str) -> None:
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"auths": {}, "currentContext": name}))


def make_cert_dir(d: Path, files: tuple[str, ...] = TLS_FILES) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f).write_text(f"{f}\n")
    return d


# -- precedence with neither -H nor --context ----------------------------------------------


def test_nothing_set_is_the_default_socket(env: dict[str, str]) -> None:
    ep = default_endpoint(env)
    assert ep == Endpoint("local", DEFAULT_HOST, None, "the default socket")
    assert DEFAULT_HOST == "unix:///var/run/docker.sock"


def test_docker_host_alone(env: dict[str, str]) -> None:
    env["DOCKER_HOST"] = "unix:///run/other.sock"
    ep = default_endpoint(env)
    assert (ep.url, ep.name, ep.origin) == ("unix:///run/other.sock", "local", "DOCKER_HOST")


def test_docker_host_beats_docker_context(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    env.update(DOCKER_HOST="tcp://h1:2375", DOCKER_CONTEXT="prod")
    assert default_endpoint(env).url == "tcp://h1:2375"


def test_docker_host_beats_current_context(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    set_current(home / ".docker", "prod")
    env["DOCKER_HOST"] = "tcp://h1:2375"
    assert default_endpoint(env).url == "tcp://h1:2375"


def test_docker_context_beats_current_context(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    write_context(home / ".docker", "stage", "tcp://10.2.2.2:2375")
    set_current(home / ".docker", "stage")
    env["DOCKER_CONTEXT"] = "prod"
    ep = default_endpoint(env)
    assert (ep.name, ep.url, ep.origin) == ("prod", "tcp://10.1.1.1:2375", "DOCKER_CONTEXT")


def test_current_context_alone(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "stage", "ssh://deploy@stage.example:2222")
    set_current(home / ".docker", "stage")
    ep = default_endpoint(env)
    assert (ep.name, ep.url) == ("stage", "ssh://deploy@stage.example:2222")


def test_current_context_empty_is_the_default(env: dict[str, str], home: Path) -> None:
    set_current(home / ".docker", "")
    assert default_endpoint(env).url == DEFAULT_HOST


def test_docker_context_default_overrides_current_context(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "stage", "tcp://10.2.2.2:2375")
    set_current(home / ".docker", "stage")
    env["DOCKER_CONTEXT"] = "default"
    ep = default_endpoint(env)
    assert (ep.name, ep.url) == ("default", DEFAULT_HOST)


def test_docker_config_moves_config_and_contexts(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere"
    write_context(cfg, "prod", "tcp://10.1.1.1:2375")
    set_current(cfg, "prod")
    assert default_endpoint(env).url == DEFAULT_HOST  # not in ~/.docker
    env["DOCKER_CONFIG"] = str(cfg)
    assert config_dir(env) == cfg
    assert default_endpoint(env).url == "tcp://10.1.1.1:2375"


def test_context_directory_is_the_sha256_of_the_name() -> None:
    assert context_id("prod") == (
        "6754af9632a2745e85c293e5aac0863370d9bd3330b9938c00cadfd215227d77"
    )


# -- flags -----------------------------------------------------------------------------


def test_host_flag_beats_the_environment(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    env.update(DOCKER_HOST="tcp://h1:2375", DOCKER_CONTEXT="prod")
    [ep] = resolve(["unix:///run/x.sock"], None, env)
    assert (ep.url, ep.origin) == ("unix:///run/x.sock", "-H unix:///run/x.sock")


def test_context_flag_beats_docker_host(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    env["DOCKER_HOST"] = "tcp://h1:2375"
    [ep] = resolve(None, ["prod"], env)
    assert (ep.name, ep.url, ep.origin) == ("prod", "tcp://10.1.1.1:2375", "--context prod")


def test_context_flag_default_follows_docker_host(env: dict[str, str]) -> None:
    """As the CLI: the `default` context is DOCKER_HOST when that is set."""
    env["DOCKER_HOST"] = "tcp://h1:2375"
    [ep] = resolve(None, ["default"], env)
    assert (ep.name, ep.url) == ("default", "tcp://h1:2375")


def test_context_without_host_is_the_default_socket(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "bare", None)
    assert only(resolve(None, ["bare"], env)).url == DEFAULT_HOST


def test_context_json_keys_match_case_insensitively(env: dict[str, str], home: Path) -> None:
    """Go's encoding/json, which the CLI reads with, ignores the case of keys."""
    meta = home / ".docker" / "contexts" / "meta" / context_id("odd")
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text('{"name":"odd","endpoints":{"docker":{"host":"tcp://o:1"}}}')
    assert only(resolve(None, ["odd"], env)).url == "tcp://o:1"


def test_several_engines_in_order_with_names(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    eps = resolve(["unix:///run/a.sock", "b=ssh://me@b.example"], ["prod"], env)
    assert [(e.name, e.url) for e in eps] == [
        ("local", "unix:///run/a.sock"),
        ("b", "ssh://me@b.example"),
        ("prod", "tcp://10.1.1.1:2375"),
    ]


# -- URLs and names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name", "url"),
    [
        ("unix:///run/docker.sock", "local", "unix:///run/docker.sock"),
        ("unix://", "local", DEFAULT_HOST),
        ("tcp://10.0.0.5:2376", "10.0.0.5", "tcp://10.0.0.5:2376"),
        ("tcp://box", "box", "tcp://box:2375"),
        ("tcp://", "localhost", "tcp://localhost:2375"),
        ("box:4243", "box", "tcp://box:4243"),  # no scheme: tcp, as the CLI
        ("tcp://[::1]:2375", "::1", "tcp://[::1]:2375"),
        ("tcp://box:2375/base/", "box", "tcp://box:2375/base"),
        ("ssh://root@127.0.0.1:2222", "127.0.0.1", "ssh://root@127.0.0.1:2222"),
        ("ssh://build.example", "build.example", "ssh://build.example"),
        ("prod=ssh://me@p.example", "prod", "ssh://me@p.example"),
        ("web=box:4243", "web", "tcp://box:4243"),
        ("tcp://box:1/a=b", "box", "tcp://box:1/a=b"),  # = after :// is the URL's
    ],
)
def test_host_flag_urls_and_names(env: dict[str, str], spec: str, name: str, url: str) -> None:
    ep = host_endpoint(spec, env)
    assert (ep.name, ep.url, ep.tls) == (name, url, None)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("bogus://x", "scheme 'bogus' is not supported"),
        ("http://box:2375", "scheme 'http' is not supported"),
        ("npipe:////./pipe/docker_engine", "scheme 'npipe' is not supported"),
        ("tcp://box:99999", "out of range"),
        ("tcp://box:0", "out of range"),
        ("tcp://box:http", "bad Docker endpoint"),
        ("tcp://box:1?x=1", "no query"),
        ("tcp://u@box:1", "takes no user"),
        ("tcp://tcp://box", "expected tcp://"),
        ("unix://run/docker.sock", "must be absolute"),
        ("ssh://", "no host"),
        ("ssh://me@", "no host"),
        ("ssh://me@box/var/run/docker.sock", "socket path is not supported"),
        ("ssh://me@box:70000", "out of range"),
        ("", "empty Docker URL"),
        ("x=", "empty Docker URL"),
        ("=unix:///a", "bad engine name ''"),
        ("a/b=unix:///a", "bad engine name 'a/b'"),
        ("..=unix:///a", "bad engine name '..'"),
        ("tcp://box\n:1", "control characters"),
        ("tcp://" + "b" * 5000, "longer than"),
    ],
)
def test_bad_urls_are_one_line_errors(env: dict[str, str], spec: str, want: str) -> None:
    with pytest.raises(EndpointError) as info:
        resolve([spec], None, env)
    message = str(info.value)
    assert want in message
    assert "\n" not in message


def test_a_password_is_refused_and_never_shown(env: dict[str, str]) -> None:
    with pytest.raises(EndpointError) as info:
        host_endpoint("ssh://me:s3cret@box", env)
    assert "password" in str(info.value) and "s3cret" not in str(info.value)


def test_bad_docker_host_names_the_variable(env: dict[str, str]) -> None:
    env["DOCKER_HOST"] = "ftp://x"
    with pytest.raises(EndpointError, match=r"^DOCKER_HOST: bad Docker endpoint"):
        default_endpoint(env)


def test_duplicate_names_are_an_error(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "prod", "tcp://10.1.1.1:2375")
    with pytest.raises(EndpointError, match="two engines named 'local'"):
        resolve(["unix:///a.sock", "unix:///b.sock"], None, env)
    with pytest.raises(EndpointError, match="two engines named 'prod'"):
        resolve(["prod=unix:///a.sock"], ["prod"], env)
    # Named apart, the same two are fine.
    assert len(resolve(["a=unix:///a.sock", "b=unix:///b.sock"], None, env)) == 2


# -- context errors ------------------------------------------------------------------


def test_unknown_context_errors(env: dict[str, str], home: Path) -> None:
    with pytest.raises(EndpointError, match=r"docker context 'nope' not found \(--context nope"):
        resolve(None, ["nope"], env)
    env["DOCKER_CONTEXT"] = "gone"
    with pytest.raises(EndpointError, match=r"'gone' not found \(DOCKER_CONTEXT"):
        default_endpoint(env)
    del env["DOCKER_CONTEXT"]
    set_current(home / ".docker", "vanished")
    with pytest.raises(EndpointError, match=r"'vanished' not found \(currentContext"):
        default_endpoint(env)


def test_bad_context_files_are_errors(env: dict[str, str], home: Path) -> None:
    cfg = home / ".docker"
    meta = cfg / "contexts" / "meta" / context_id("broken")
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text("{not json")
    with pytest.raises(EndpointError, match="not valid JSON"):
        resolve(None, ["broken"], env)
    (meta / "meta.json").write_text(json.dumps({"Name": "broken", "Endpoints": {}}))
    with pytest.raises(EndpointError, match="has no docker endpoint"):
        resolve(None, ["broken"], env)
    (meta / "meta.json").write_text(json.dumps({"Endpoints": {"docker": {"Host": 5}}}))
    with pytest.raises(EndpointError, match="bad docker endpoint"):
        resolve(None, ["broken"], env)
    (meta / "meta.json").write_text(json.dumps({"Endpoints": {"docker": {"Host": "gopher://"}}}))
    with pytest.raises(EndpointError, match="docker context 'broken': bad Docker endpoint"):
        resolve(None, ["broken"], env)
    with pytest.raises(EndpointError, match="empty context name"):
        resolve(None, [""], env)


def test_bad_config_json_is_an_error(env: dict[str, str], home: Path) -> None:
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text("{")
    with pytest.raises(EndpointError, match=r"docker config .* is not valid JSON"):
        default_endpoint(env)
    (home / ".docker" / "config.json").write_text('{"currentContext": 3}')
    with pytest.raises(EndpointError, match="currentContext is not a string"):
        default_endpoint(env)
    # Not read at all when DOCKER_HOST decides.
    env["DOCKER_HOST"] = "unix:///x"
    assert default_endpoint(env).url == "unix:///x"


# -- TLS -------------------------------------------------------------------------------


def test_tls_verify_from_cert_path(env: dict[str, str], tmp_path: Path) -> None:
    certs = make_cert_dir(tmp_path / "certs")
    env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(certs))
    ep = host_endpoint("tcp://box:2376", env)
    assert ep.tls == TLS(str(certs / "ca.pem"), str(certs / "cert.pem"), str(certs / "key.pem"))
    assert ep.tls.verify


def test_tls_verify_any_non_empty_value_means_verify(env: dict[str, str], tmp_path: Path) -> None:
    """The CLI tests DOCKER_TLS_VERIFY != "", so even "0" turns verification on."""
    certs = make_cert_dir(tmp_path / "certs")
    env.update(DOCKER_TLS_VERIFY="0", DOCKER_CERT_PATH=str(certs))
    tls = host_endpoint("tcp://box:2376", env).tls
    assert tls is not None and tls.verify
    env["DOCKER_TLS_VERIFY"] = ""
    assert host_endpoint("tcp://box:2376", env).tls is None


def test_docker_tls_alone_encrypts_without_verifying(env: dict[str, str], tmp_path: Path) -> None:
    certs = make_cert_dir(tmp_path / "certs")
    env.update(DOCKER_TLS="1", DOCKER_CERT_PATH=str(certs))
    tls = host_endpoint("tcp://box:2376", env).tls
    assert tls is not None and not tls.verify


def test_cert_path_defaults_to_the_config_dir(env: dict[str, str], home: Path) -> None:
    certs = make_cert_dir(home / ".docker")
    env["DOCKER_TLS_VERIFY"] = "1"
    tls = host_endpoint("tcp://box:2376", env).tls
    assert tls is not None and tls.ca == str(certs / "ca.pem")


def test_tls_needs_the_ca_file(env: dict[str, str], tmp_path: Path) -> None:
    env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(make_cert_dir(tmp_path / "c", ())))
    with pytest.raises(EndpointError, match="DOCKER_TLS_VERIFY is set but there is no CA"):
        host_endpoint("tcp://box:2376", env)


def test_client_key_pair_is_used_only_whole(env: dict[str, str], tmp_path: Path) -> None:
    certs = make_cert_dir(tmp_path / "c", ("ca.pem", "cert.pem"))
    env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(certs))
    assert host_endpoint("tcp://box:2376", env).tls == TLS(str(certs / "ca.pem"), None, None)


def test_tls_applies_to_tcp_only(env: dict[str, str], tmp_path: Path) -> None:
    env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(tmp_path / "none"))
    assert host_endpoint("unix:///run/d.sock", env).tls is None
    assert host_endpoint("ssh://me@box", env).tls is None


def test_tls_variables_move_the_default_to_the_tls_port(
    env: dict[str, str], tmp_path: Path
) -> None:
    env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(make_cert_dir(tmp_path / "c")))
    ep = default_endpoint(env)
    assert ep.url == DEFAULT_TLS_HOST == "tcp://localhost:2376"
    assert ep.tls is not None and ep.tls.verify


def test_context_tls_material(env: dict[str, str], home: Path) -> None:
    tls_dir = write_context(home / ".docker", "secure", "tcp://s:2376", tls_files=TLS_FILES)
    ep = only(resolve(None, ["secure"], env))
    ca, cert, key = (str(tls_dir / f) for f in TLS_FILES)
    assert ep.tls == TLS(ca, cert, key, verify=True)


def test_context_ca_only_and_skip_verify(env: dict[str, str], home: Path) -> None:
    cfg = home / ".docker"
    tls_dir = write_context(cfg, "ca-only", "tcp://s:2376", tls_files=("ca.pem",))
    assert only(resolve(None, ["ca-only"], env)).tls == TLS(str(tls_dir / "ca.pem"), None, None)
    write_context(cfg, "skip", "tcp://s:2376", skip_verify=True)
    assert only(resolve(None, ["skip"], env)).tls == TLS(None, None, None, verify=False)
    write_context(cfg, "plain", "tcp://s:2375")
    assert only(resolve(None, ["plain"], env)).tls is None


def test_context_tls_ignores_the_environment(env: dict[str, str], home: Path) -> None:
    """As the CLI: DOCKER_TLS_VERIFY and DOCKER_CERT_PATH are for the default context only."""
    write_context(home / ".docker", "plain", "tcp://s:2375")
    env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH="/nonexistent")
    assert only(resolve(None, ["plain"], env)).tls is None


def test_context_over_unix_or_ssh_carries_no_tls(env: dict[str, str], home: Path) -> None:
    write_context(home / ".docker", "sshctx", "ssh://me@box", tls_files=TLS_FILES)
    assert only(resolve(None, ["sshctx"], env)).tls is None


# -- the docker CLI gives the same answers -------------------------------------------------


def docker_cli() -> str:
    found = shutil.which("docker")
    require(found is not None, "docker CLI missing (Debian docker.io)")
    assert found is not None
    return found


def cli_answer(env: dict[str, str], *flags: str) -> tuple[str, str]:
    """(context name, docker host) as the docker CLI resolves them."""
    res = subprocess.run(
        [
            docker_cli(),
            *flags,
            "context",
            "inspect",
            "--format",
            "{{.Name}} {{.Endpoints.docker.Host}}",
        ],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    name, host = res.stdout.split()
    return name, host


def cli_create_context(env: dict[str, str], name: str, docker: str) -> None:
    res = subprocess.run(
        [docker_cli(), "context", "create", name, "--docker", docker],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"DOCKER_HOST": "tcp://h1:2375"},
        {"DOCKER_HOST": "h1:4243"},
        {"DOCKER_HOST": "tcp://h1:2375", "DOCKER_CONTEXT": "prod"},
        {"DOCKER_CONTEXT": "prod"},
        {"DOCKER_CONTEXT": "default"},
        {"current": "stage"},
        {"current": "stage", "DOCKER_CONTEXT": "prod"},
        {"current": "stage", "DOCKER_HOST": "unix:///run/h.sock"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "nothing",
)
def test_precedence_agrees_with_the_docker_cli(
    env: dict[str, str], home: Path, case: dict[str, str]
) -> None:
    cli_create_context(env, "prod", "host=tcp://10.1.1.1:2375")
    cli_create_context(env, "stage", "host=ssh://deploy@stage.example")
    case = dict(case)
    if "current" in case:
        set_current(home / ".docker", case.pop("current"))
    env.update(case)
    name, host = cli_answer(env)
    ep = default_endpoint(env)
    assert ep.url == host
    if name != "default":
        assert ep.name == name


def test_context_made_by_the_docker_cli_with_tls(env: dict[str, str], home: Path) -> None:
    """The store layout (sha256 directories, TLS files) as the CLI itself writes it."""
    require(shutil.which("openssl") is not None, "openssl missing")
    from support.private_engines import make_tls_material

    m = make_tls_material(home / "tls")
    c = m.client_dir
    cli_create_context(
        env,
        "secure",
        f"host=tcp://127.0.0.1:2376,ca={c / 'ca.pem'},cert={c / 'cert.pem'},key={c / 'key.pem'}",
    )
    assert cli_answer(env, "--context", "secure") == ("secure", "tcp://127.0.0.1:2376")
    ep = only(resolve(None, ["secure"], env))
    assert ep.url == "tcp://127.0.0.1:2376" and ep.tls is not None and ep.tls.verify
    for path, original in zip((ep.tls.ca, ep.tls.cert, ep.tls.key), TLS_FILES, strict=True):
        assert path is not None
        assert Path(path).read_bytes() == (c / original).read_bytes()
        assert Path(path).parent == home / ".docker/contexts/tls" / context_id("secure") / "docker"
