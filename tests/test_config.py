"""Settings: file < environment < flags, errors that name the key, secrets masked, tokens minted."""

import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtmpq.auth.tokens import verify_token
from rtmpq.cli import _overrides, build_parser
from rtmpq.config import ConfigError, load_config, show
from rtmpq.moq.session import SessionCaps


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rtmpq.toml"
    path.write_text(text)
    return path


def test_defaults():
    config = load_config(env={})
    assert config.rtmp.port == 1935 and config.moq.port == 4443 and config.http.port == 8080
    assert config.publish.idle_timeout == 10.0 and config.publish.grace_period == 30.0
    assert not config.publish.keys and not config.auth.secret
    assert config.auth.playback_session == 6 * 3600  # an HLS viewer who started watches on this long


def test_the_playback_session_from_file_and_environment(tmp_path):
    path = write(tmp_path, '[auth]\nplayback_session = 7200\n')
    assert load_config(path, env={}).auth.playback_session == 7200.0
    assert load_config(path, env={"RTMPQ_AUTH_PLAYBACK_SESSION": "600"}).auth.playback_session == 600.0


def test_stream_key_guessing_limits_from_file_and_environment(tmp_path):
    defaults = load_config(env={}).rtmp
    assert (defaults.max_refused_publishes, defaults.refused_publish_window, defaults.refused_publish_cooldown) == (10, 60, 120)
    path = write(tmp_path, '[rtmp]\nmax_refused_publishes = 5\nrefused_publish_cooldown = 600\n')
    config = load_config(path, env={"RTMPQ_RTMP_REFUSED_PUBLISH_WINDOW": "30"}).rtmp
    assert (config.max_refused_publishes, config.refused_publish_window, config.refused_publish_cooldown) == (5, 30, 600)


def test_the_limits_that_were_constants_from_file_and_environment(tmp_path):
    defaults = load_config(env={})
    assert (defaults.moq.upstream_wait, defaults.moq.max_waiting_subscribes) == (12.0, 256)
    assert defaults.upstream.refused_reconnect_max == 2.0 and defaults.transcode.decode_queue_frames == 240
    path = write(tmp_path, '[moq]\nupstream_wait = 0\nmax_waiting_subscribes = 16\n'
                           '[upstream]\nrefused_reconnect_max = 0.5\n[transcode]\ndecode_queue_frames = 120\n')
    config = load_config(path, env={})
    assert (config.moq.upstream_wait, config.moq.max_waiting_subscribes) == (0.0, 16)
    assert config.upstream.refused_reconnect_max == 0.5 and config.transcode.decode_queue_frames == 120
    config = load_config(path, env={"RTMPQ_MOQ_UPSTREAM_WAIT": "30", "RTMPQ_MOQ_MAX_WAITING_SUBSCRIBES": "1024",
                                    "RTMPQ_UPSTREAM_REFUSED_RECONNECT_MAX": "5",
                                    "RTMPQ_TRANSCODE_DECODE_QUEUE_FRAMES": "480"})
    assert (config.moq.upstream_wait, config.moq.max_waiting_subscribes) == (30.0, 1024)
    assert config.upstream.refused_reconnect_max == 5.0 and config.transcode.decode_queue_frames == 480


def test_the_relay_cache_and_delivery_limits_from_file_and_environment(tmp_path):
    moq = load_config(env={}).moq
    assert (moq.group_cache_max_bytes, moq.group_cache_max_age, moq.group_cache_max_groups) == (32 << 20, 30.0, 8)
    assert (moq.delivery_timeout, moq.send_budget) == (2.0, 4 << 20)
    path = write(tmp_path, '[moq]\ngroup_cache_max_bytes = 1000000\ngroup_cache_max_age = 10\ngroup_cache_max_groups = 2\n'
                           'delivery_timeout = 0.5\nsend_budget = 65536\n')
    moq = load_config(path, env={}).moq
    assert (moq.cache_bounds.max_bytes, moq.cache_bounds.max_age, moq.cache_bounds.max_groups) == (1000000, 10.0, 2)
    assert (moq.delivery_timeout, moq.send_budget) == (0.5, 65536)
    moq = load_config(path, env={"RTMPQ_MOQ_GROUP_CACHE_MAX_BYTES": "2000000", "RTMPQ_MOQ_GROUP_CACHE_MAX_AGE": "60",
                                 "RTMPQ_MOQ_GROUP_CACHE_MAX_GROUPS": "16", "RTMPQ_MOQ_DELIVERY_TIMEOUT": "5",
                                 "RTMPQ_MOQ_SEND_BUDGET": "8388608"}).moq
    assert (moq.group_cache_max_bytes, moq.group_cache_max_age, moq.group_cache_max_groups) == (2000000, 60.0, 16)
    assert (moq.delivery_timeout, moq.send_budget) == (5.0, 8 << 20)


def test_the_in_process_broadcast_fetch_and_recording_limits_from_file_and_environment(tmp_path):
    defaults = load_config(env={})
    assert (defaults.publish.max_group_bytes, defaults.publish.reader_max_buffered_bytes) == (24 << 20, 32 << 20)
    assert (defaults.moq.max_fetch_bytes, defaults.rtmp.record_max_queued_bytes) == (8 << 20, 32 << 20)
    path = write(tmp_path, '[publish]\nmax_group_bytes = 1000\nreader_max_buffered_bytes = 2000\n'
                           '[moq]\nmax_fetch_bytes = 3000\n[rtmp]\nrecord_max_queued_bytes = 4000\n')
    config = load_config(path, env={})
    assert (config.publish.max_group_bytes, config.publish.reader_max_buffered_bytes) == (1000, 2000)
    assert (config.moq.max_fetch_bytes, config.rtmp.record_max_queued_bytes) == (3000, 4000)
    config = load_config(path, env={"RTMPQ_PUBLISH_MAX_GROUP_BYTES": "10", "RTMPQ_PUBLISH_READER_MAX_BUFFERED_BYTES": "20",
                                    "RTMPQ_MOQ_MAX_FETCH_BYTES": "30", "RTMPQ_RTMP_RECORD_MAX_QUEUED_BYTES": "40"})
    assert (config.publish.max_group_bytes, config.publish.reader_max_buffered_bytes) == (10, 20)
    assert (config.moq.max_fetch_bytes, config.rtmp.record_max_queued_bytes) == (30, 40)


def test_the_moq_per_session_caps_from_file_and_environment(tmp_path):
    moq = load_config(env={}).moq
    assert moq.session_caps == SessionCaps(1000, 256, 32 << 20, 8 << 20)
    path = write(tmp_path, '[moq]\nsession_max_requests = 50\nsession_max_streams = 20\n'
                           'session_max_stream_buffer = 20000000\nsession_max_held_bytes = 65536\n')
    assert load_config(path, env={}).moq.session_caps == SessionCaps(50, 20, 20_000_000, 65536)
    moq = load_config(path, env={"RTMPQ_MOQ_SESSION_MAX_REQUESTS": "5", "RTMPQ_MOQ_SESSION_MAX_STREAMS": "2",
                                 "RTMPQ_MOQ_SESSION_MAX_STREAM_BUFFER": "17000000",
                                 "RTMPQ_MOQ_SESSION_MAX_HELD_BYTES": "1000"}).moq
    assert moq.session_caps == SessionCaps(5, 2, 17_000_000, 1000)


def test_the_edge_and_directory_limits_from_file_and_environment(tmp_path):
    defaults = load_config(env={})
    assert (defaults.http.rendition_idle, defaults.http.max_viewers_tracked, defaults.directory.max_entries) == (
        15.0, 16384, 100_000)
    path = write(tmp_path, '[http]\nrendition_idle = 2\nmax_viewers_tracked = 10\n[directory]\nmax_entries = 50\n')
    config = load_config(path, env={})
    assert (config.http.rendition_idle, config.http.max_viewers_tracked, config.directory.max_entries) == (2.0, 10, 50)
    config = load_config(path, env={"RTMPQ_HTTP_RENDITION_IDLE": "60", "RTMPQ_HTTP_MAX_VIEWERS_TRACKED": "100000",
                                    "RTMPQ_DIRECTORY_MAX_ENTRIES": "1000000"})
    assert (config.http.rendition_idle, config.http.max_viewers_tracked, config.directory.max_entries) == (
        60.0, 100_000, 1_000_000)


def test_flag_beats_environment_beats_file(tmp_path):
    path = write(tmp_path, '[rtmp]\nport = 1000\nhost = "127.0.0.1"\n[publish]\ngrace_period = 5\n'
                           '[publish.keys]\n"sk-1" = "studio"\n')
    config = load_config(path, env={})
    assert (config.rtmp.host, config.rtmp.port, config.publish.grace_period) == ("127.0.0.1", 1000, 5.0)
    assert config.publish.keys == {"sk-1": "studio"}
    config = load_config(path, env={"RTMPQ_RTMP_PORT": "2000", "RTMPQ_PUBLISH_GRACE_PERIOD": "7.5"})
    assert config.rtmp.port == 2000 and config.publish.grace_period == 7.5
    args = build_parser().parse_args(["up", "--rtmp", "0.0.0.0:3000"])
    config = load_config(path, env={"RTMPQ_RTMP_PORT": "2000"}, overrides=_overrides(args))
    assert (config.rtmp.host, config.rtmp.port) == ("0.0.0.0", 3000)
    assert config.rtmp.host == "0.0.0.0"  # the flag gave both


def test_rtmps_from_flags_and_file(tmp_path):
    assert load_config(env={}).rtmp.tls_port is None  # off unless asked for
    path = write(tmp_path, '[rtmp]\ntls_port = 8443\ntls_cert = "/etc/rtmpq/c.pem"\ntls_key = "/etc/rtmpq/k.pem"\n')
    config = load_config(path, env={})
    assert (config.rtmp.tls_host, config.rtmp.tls_port) == ("0.0.0.0", 8443)
    assert (config.rtmp.tls_cert, config.rtmp.tls_key) == (Path("/etc/rtmpq/c.pem"), Path("/etc/rtmpq/k.pem"))
    for command in ("up", "ingest"):
        args = build_parser().parse_args([command, "--rtmps", "127.0.0.1:1936", "--rtmps-cert", "c.pem",
                                          "--rtmps-key", "k.pem"])
        config = load_config(env={}, overrides=_overrides(args))
        assert (config.rtmp.tls_host, config.rtmp.tls_port) == ("127.0.0.1", 1936)
        assert (config.rtmp.tls_cert, config.rtmp.tls_key) == (Path("c.pem"), Path("k.pem"))
    args = build_parser().parse_args(["up", "--rtmps", "example.net"])
    assert _overrides(args)[("rtmp", "tls_port")] == 443  # what OBS and the services use


def test_an_rtmps_certificate_without_its_key_is_refused(tmp_path):
    bad = run_cli("up", "--rtmps", "127.0.0.1:0", "--rtmps-cert", str(tmp_path / "c.pem"))
    assert bad.returncode == 2 and "rtmp.tls_cert and rtmp.tls_key go together" in bad.stderr


@pytest.mark.parametrize("text, message", [
    ('[rtmp]\ntls_key = "k.pem"\n', "rtmp.tls_cert and rtmp.tls_key go together"),
    ('[moq]\ncertfile = "c.pem"\n', "moq.certfile and moq.keyfile go together"),  # was: self-signed, silently
    ('[moq]\nkeyfile = "k.pem"\n', "moq.certfile and moq.keyfile go together"),
    ("[rtmp]\ntls_port = 70000\n", "rtmp.tls_port: 70000 is not a port number"),
    ("[rtmp]\ntls_handshake_timeout = 0\n", "rtmp.tls_handshake_timeout: must be positive"),
    ("[moq]\nhandshake_timeout = 0\n", "moq.handshake_timeout: must be positive"),
    ("[moq]\nmax_connections_per_ip = 0\n", "moq.max_connections_per_ip: must be positive"),
    ("[moq]\nidle_timeout = 0.5\n", "moq.idle_timeout: must be a number of seconds, at least 1 (got 0.5)"),
    ("[moq]\nidle_timeout = inf\n", "moq.idle_timeout: must be a number of seconds, at least 1 (got inf)"),
    ("[moq]\nidle_timeout = nan\n", "moq.idle_timeout: expected a number (got nan)"),
    ("[http]\nrendition_idle = 0\n", "http.rendition_idle: must be positive"),
    ("[http]\nmax_viewers_tracked = 0\n", "http.max_viewers_tracked: must be positive"),
    ("[directory]\nmax_entries = 0\n", "directory.max_entries: must be positive"),
    ("[publish]\nmax_group_bytes = 0\n", "publish.max_group_bytes: must be positive"),
    ("[publish]\nreader_max_buffered_bytes = -1\n", "publish.reader_max_buffered_bytes: must be positive"),
    ("[moq]\nmax_fetch_bytes = 0\n", "moq.max_fetch_bytes: must be positive"),
    ("[rtmp]\nrecord_max_queued_bytes = 0\n", "rtmp.record_max_queued_bytes: must be positive"),
    ("[moq]\ngroup_cache_max_bytes = 0\n", "moq.group_cache_max_bytes: must be positive"),
    ("[moq]\ngroup_cache_max_groups = 0\n", "moq.group_cache_max_groups: must be positive"),
    ("[moq]\ngroup_cache_max_age = 0\n", "moq.group_cache_max_age: must be a positive number of seconds (got 0.0)"),
    ("[moq]\ndelivery_timeout = inf\n", "moq.delivery_timeout: must be a positive number of seconds (got inf)"),
    ("[moq]\nsend_budget = -1\n", "moq.send_budget: must be positive"),
    ("[moq]\nsession_max_requests = 0\n", "moq.session_max_requests: must be positive"),
    ("[moq]\nsession_max_streams = 0\n", "moq.session_max_streams: must be positive"),
    ("[moq]\nsession_max_held_bytes = 0\n", "moq.session_max_held_bytes: must be positive"),
    ("[moq]\nsession_max_stream_buffer = 1000000\n", "moq.session_max_stream_buffer: must be at least 16777216"),
    ("[moq]\nupstream_wait = -1\n", "moq.upstream_wait: must be a number of seconds, 0 or more (got -1.0)"),
    ("[moq]\nupstream_wait = nan\n", "moq.upstream_wait: expected a number (got nan)"),
    ("[moq]\nmax_waiting_subscribes = -1\n", "moq.max_waiting_subscribes: must not be negative"),
    ("[upstream]\nrefused_reconnect_max = 0\n", "upstream.refused_reconnect_max: must be a positive number of seconds"),
    ("[transcode]\ndecode_queue_frames = 0\n", "transcode.decode_queue_frames: must be at least 1"),
    ("[rtmp]\nmax_connections_per_ip = 0\n", "rtmp.max_connections_per_ip: must be positive"),
    ("[rtmp]\nmax_refused_publishes = -1\n", "rtmp.max_refused_publishes: must not be negative"),
    ("[rtmp]\nrefused_publish_window = 0\n", "rtmp.refused_publish_window: must be a positive number of seconds"),
    ("[rtmp]\nrefused_publish_cooldown = inf\n", "rtmp.refused_publish_cooldown: must be a positive number of seconds"),
    ("[rtmp]\nprot = 1\n", "unknown key in [rtmp] 'prot' (did you mean 'port'?)"),
    ("[rtmp]\nreconnect_wait = -1\n", "rtmp.reconnect_wait: must be a number of seconds, 0 or more"),
    ("[rtmp]\nreconnect_wait = nan\n", "rtmp.reconnect_wait: expected a number"),
    ('[rtmp]\nreconnect_url = "http://b:1935/live"\n', "rtmp.reconnect_url: expected rtmp://HOST[:PORT][/APP]"),
    ('[rtmp]\nreconnect_url = "rtmp:///live"\n', "rtmp.reconnect_url: expected rtmp://HOST[:PORT][/APP]"),
    ('[rtmp]\nreconnect_url = "rtmp://b:x/live"\n', "rtmp.reconnect_url: expected rtmp://HOST[:PORT][/APP]"),
    ("[rmtp]\nport = 1\n", "unknown config section '[rmtp]'"),
    ('[rtmp]\nport = "x"\n', "rtmp.port: expected an integer"),
    ("[rtmp]\nport = 70000\n", "rtmp.port: 70000 is not a port number"),
    # a number in quotes is a TOML string (was: taken as the number, against this file's promise)
    ('[rtmp]\nport = "1935"\n', "rtmp.port: expected an integer, without quotes (got '1935')"),
    # NaN passed every bound after it (was: a part target of nan s, a grace period of nan s)
    ("[http]\npart_target = nan\n", "http.part_target: expected a number (got nan)"),
    ("[publish]\ngrace_period = nan\n", "publish.grace_period: expected a number (got nan)"),
    ("[publish]\nidle_timeout = -1\n", "publish.idle_timeout: must not be negative"),
    ("[auth]\nrequire_playback_token = true\n", "auth.require_playback_token needs auth.secret"),
    ("[auth]\nplayback_session = 0\n", "auth.playback_session: must be positive"),
    ('[publish.keys]\n"sk" = "a/b/c"\n', "publish.keys: 'a/b/c' is not a public name"),
    ('[publish.keys]\n"sk" = "../studio"\n', "publish.keys: '../studio' is not a public name"),  # unplayable
    ('[publish.keys]\n"sk" = ".."\n', "publish.keys: '..' is not a public name"),
    ("[rtmp\n", "config file"),
    # a key above every section (was: "unknown config section '[secret]'")
    ('secret = "x"\n[auth]\n', "'secret' is outside any section: settings go under their [section] (secret is in [auth])"),
    ("prot = 1\n", "'prot' is outside any section: settings go under their [section]"),
])
def test_a_bad_file_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, text), env={})


def test_where_publishers_are_asked_to_reconnect_comes_from_the_file_or_the_environment(tmp_path):
    config = load_config(write(tmp_path, '[rtmp]\nreconnect_url = "rtmps://ingest-b.example:443"\n'),
                         env={"RTMPQ_RTMP_RECONNECT_WAIT": "0"})
    assert (config.rtmp.reconnect_url, config.rtmp.reconnect_wait) == ("rtmps://ingest-b.example:443", 0.0)
    assert load_config(env={}).rtmp.reconnect_wait == 4.0


def test_a_bad_environment_variable_names_itself():
    with pytest.raises(ConfigError, match="RTMPQ_AUTH_SECRETS"):
        load_config(env={"RTMPQ_AUTH_SECRETS": "x"})
    with pytest.raises(ConfigError, match="publish.grace_period: expected a number"):
        load_config(env={"RTMPQ_PUBLISH_GRACE_PERIOD": "soon"})
    with pytest.raises(ConfigError, match="publish.grace_period: expected a number"):
        load_config(env={"RTMPQ_PUBLISH_GRACE_PERIOD": "nan"})
    # was: "dictionary update sequence element #0 has length 1; 2 is required"
    with pytest.raises(ConfigError, match="publish.keys: expected key=value pairs separated by commas$"):
        load_config(env={"RTMPQ_PUBLISH_KEYS": "sk-secret"})
    assert load_config(env={"RTMPQ_RTMP_PORT": "1999"}).rtmp.port == 1999  # the environment's numbers are text
    load_config(env={"RTMPQ_PUREPYTHON": "1"})  # other parts' variables are not settings


def test_show_masks_secrets(tmp_path):
    from rtmpq.auth.tokens import mint_token

    token = mint_token("s3cr3t-value", "", "relay", 60, now=time.time())
    path = write(tmp_path, f'[auth]\nsecret = "s3cr3t-value"\nnode_token = "{token}"\n[publish.keys]\n"sk-hidden" = "studio"\n')
    text = show(load_config(path, env={}))
    assert "s3cr3t-value" not in text and token not in text and "sk-hidden" not in text
    assert '"studio"' in text and "grace_period = 30.0" in text



def test_a_config_holding_shows_secret_placeholder_is_refused(tmp_path):
    """`rtmpq config show > node.toml` gave a file whose secrets were the literal "********": it
    loaded, and every token, stream key, hook call or Redis login then failed. Such a file (or
    environment) is refused, the setting named; show's output of a config with no secrets still loads."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIiLCJhY3QiOiJyZWxheSIsImV4cCI6OTk5OTk5OTk5OX0.sig"
    path = write(tmp_path, f'[auth]\nsecret = "s3cr3t"\nnode_token = "{token}"\n[publish]\nhook_url = '
                           '"https://hooks.example/x"\n[directory]\nurl = "redis://u:pw@redis:6379"\n'
                           '[publish.keys]\n"sk-1" = "studio"\n')
    saved = write(tmp_path, show(load_config(path, env={})))
    for where in ("auth.node_token", "auth.secret", "publish.hook_url", "publish.keys", "directory.url"):
        with pytest.raises(ConfigError, match=re.escape(where) + r".*'\*{8}', the placeholder `rtmpq config show`"):
            load_config(saved, env={})
        text = saved.read_text()  # put the real value back, then the next one is named
        text = {"auth.node_token": text.replace('node_token = "********"', f'node_token = "{token}"'),
                "auth.secret": text.replace('secret = "********"', 'secret = "s3cr3t"'),
                "publish.hook_url": text.replace('hook_url = "********"', 'hook_url = "https://hooks.example/x"'),
                "publish.keys": text.replace('"********0" = "studio"', '"sk-1" = "studio"'),
                "directory.url": text.replace("u:********@", "u:pw@")}[where]
        saved.write_text(text)
    assert load_config(saved, env={}) == load_config(path, env={})
    with pytest.raises(ConfigError, match="auth.secret: is '\\*{8}'"):
        load_config(env={"RTMPQ_AUTH_SECRET": "********"})
    assert load_config(write(tmp_path, show(load_config(env={}))), env={}) == load_config(env={})


def test_show_names_the_rungs_of_the_transcode_tables(tmp_path):
    """Only [publish.keys] holds secrets: the rungs of [transcode.bitrates] and [transcode.presets]
    were masked like stream keys ("********0" = "1000"), so show could not say which rung was which."""
    path = write(tmp_path, '[transcode]\nladder = "480p,360p"\n[transcode.bitrates]\n"480p" = "1000"\n'
                           '[transcode.presets]\n"360p" = "medium"\n')
    text = show(load_config(path, env={}))
    assert '[transcode.bitrates]\n"480p" = "1000"\n' in text and '[transcode.presets]\n"360p" = "medium"\n' in text
    assert load_config(write(tmp_path, text), env={}).transcode.bitrates == {"480p": "1000"}  # show's output loads


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtmpq", *args], capture_output=True, text=True, timeout=30,
                          env=env)


def test_cli_config_show_and_errors(tmp_path):
    ok = run_cli("config", "show", "--config", str(write(tmp_path, "[http]\nport = 9090\n")))
    assert ok.returncode == 0 and "port = 9090" in ok.stdout
    bare = run_cli("config", "--config", str(write(tmp_path, "[http]\nport = 9090\n")))  # show is the default
    assert bare.returncode == 0 and bare.stdout == ok.stdout, bare.stderr  # was: "arguments are required: action"
    bad = run_cli("up", "--config", str(write(tmp_path, "[http]\nprot = 9090\n")))
    assert bad.returncode == 2 and "unknown key in [http] 'prot'" in bad.stderr


def test_cli_mints_tokens_the_nodes_accept(tmp_path):
    path = write(tmp_path, '[auth]\nsecret = "a-shared-secret-of-32-bytes-or-more!!"\n')
    out = run_cli("token", "--config", str(path), "--act", "publish", "--sub", "live/studio", "--ttl", "60")
    assert out.returncode == 0, out.stderr
    claims = verify_token(out.stdout.strip(), "a-shared-secret-of-32-bytes-or-more!!", act="publish",
                          path="live/studio", now=time.time())
    assert claims.sub == "live/studio"
    missing = run_cli("token", "--act", "relay")
    assert missing.returncode == 2 and "no secret" in missing.stderr


@pytest.mark.parametrize("args", [
    ["sub", "moqt://h:1/live/x", "--frames", "0"],  # was: no limit (a falsy count)
    ["sub", "moqt://h:1/live/x", "--frames", "-3"],  # was: stopped after one object
    ["sub", "moqt://h:1/live/x", "--seconds", "0"],  # was: no limit
    ["sub", "moqt://h:1/live/x", "--seconds", "nan"],
    ["sub", "moqt://h:1/live/x", "--seconds", "inf"],
    ["sub", "moqt://h:1/live/x", "--delivery-timeout", "-1"],  # was: "bytes must be in range(0, 256)"
    ["token", "--act", "publish", "--ttl", "0"],
])
def test_counts_and_durations_on_the_command_line_must_be_positive(args, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(args)
    assert exc.value.code == 2 and "must be a finite number more than 0" in capsys.readouterr().err


def test_a_token_that_would_be_born_expired_is_refused_without_a_traceback():
    out = run_cli("token", "--act", "publish", "--sub", "live/x", "--ttl", "-5",
                  env={"RTMPQ_AUTH_SECRET": "a-shared-secret-of-32-bytes-or-more!!", "PATH": ""})
    assert out.returncode == 2 and "--ttl" in out.stderr and "Traceback" not in out.stderr, out.stderr
    with pytest.raises(ConfigError, match="upstream.wait: must not be negative"):  # rtmpq sub --wait -1
        load_config(env={"RTMPQ_UPSTREAM_WAIT": "-1"})


def test_a_state_dir_or_record_dir_that_is_a_file_is_named_as_such(tmp_path):
    """--state-dir naming a file stopped the node with "[Errno 20] Not a directory: '.../tls'"
    (no setting named, after the RTMP listener was up); --record naming one said "File exists"."""
    from rtmpq.media.recording import check_record_dir
    from rtmpq.moq.tls import server_pair

    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError, match=re.escape(f"moq.state_dir (--state-dir): cannot keep the node's "
                                                    f"self-signed certificate in {afile / 'tls'}: Not a directory")):
        server_pair(None, None, afile)
    with pytest.raises(ConfigError, match=re.escape(f"rtmp.record_dir (--record): cannot record in {afile}: "
                                                    "it is not a directory")):
        check_record_dir(afile)


@pytest.mark.parametrize("command", ["relay", "edge", "transcode", "ingest"])
def test_an_upstream_that_is_no_moqt_url_stops_the_node_before_it_listens(tmp_path, command):
    """`rtmpq relay --upstream http://...` used to start its MoQ listener (its log said so) and only
    then stop, exit status 1, on "expected a moqt:// URL": now the setting is named at start."""
    listen = {"relay": ["--moq", "127.0.0.1:0", "--state-dir", str(tmp_path)], "edge": ["--http", "127.0.0.1:0"],
              "transcode": [], "ingest": ["--rtmp", "127.0.0.1:0"]}[command]
    out = run_cli(command, *listen, "--upstream", "http://127.0.0.1:4443")
    assert out.returncode == 2, out.stderr
    assert "upstream.url (--upstream): expected moqt://HOST:PORT (got 'http://127.0.0.1:4443')" in out.stderr, out.stderr
    assert "listening" not in out.stderr and " on udp " not in out.stderr and " on http" not in out.stderr, out.stderr


def test_sub_says_at_once_when_no_server_answers():
    """A subscriber pointed at an address where nothing listens says so (address, reason) within
    a few seconds and exits non-zero, without tracebacks."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never answered
        started = time.monotonic()
        out = run_cli("sub", f"moqt://127.0.0.1:{port}/live/none", "--insecure")
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in out.stderr and "no MoQ answer" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "never retrieved" not in out.stderr, out.stderr
    assert time.monotonic() - started < 15


def test_a_moq_certificate_without_its_key_is_refused(tmp_path):
    """--cert alone used to start the node on its self-signed certificate, saying nothing."""
    bad = run_cli("up", "--rtmp", "127.0.0.1:0", "--moq", "127.0.0.1:0", "--http", "127.0.0.1:0",
                  "--state-dir", str(tmp_path / "state"), "--cert", str(tmp_path / "c.pem"))
    assert bad.returncode == 2 and "moq.certfile and moq.keyfile go together (--cert and --key)" in bad.stderr


async def test_a_certificate_that_cannot_be_loaded_names_its_settings(tmp_path):
    """The MoQ and HTTPS listeners' files, like RTMPS's: the error names the setting and the files
    (it was picoquic's or Python's bare "No such file or directory" / "Invalid PEM encoding")."""
    from rtmpq.config import HttpConfig
    from rtmpq.http.server import HttpServer
    from rtmpq.moq.tls import ensure_self_signed, server_pair

    cert, key = ensure_self_signed(tmp_path / "tls")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    _, other_key = ensure_self_signed(tmp_path / "other")
    for c, k in ((tmp_path / "missing.pem", key), (garbage, garbage), (cert, other_key)):
        with pytest.raises(ConfigError, match=re.escape(f"moq.certfile/moq.keyfile (--cert/--key): cannot load {c} with {k}")):
            server_pair(c, k, tmp_path / "state")
        with pytest.raises(ConfigError, match=re.escape(f"http.certfile/http.keyfile (--http-cert/--http-key): "
                                                        f"cannot load {c} with {k}")):
            HttpServer(None, HttpConfig(host="127.0.0.1", port=0, certfile=c, keyfile=k))
    assert server_pair(cert, key, tmp_path / "state")[:2] == (cert, key)
    assert server_pair(None, None, tmp_path / "state")[:2] == ensure_self_signed(tmp_path / "state" / "tls")


def test_the_fingerprint_of_a_certificate_chain_is_its_first_certificates(tmp_path):
    """A CA's certificate file holds the chain after the node's own (Let's Encrypt's
    fullchain.pem): the fingerprint the node logs (and registers in the directory) is of the node's
    own, as openssl and the clients see it. It was the hash of the whole file's base64 decoded as one,
    wrong for most chains."""
    import hashlib
    import ssl

    from rtmpq.moq.tls import ensure_self_signed, fingerprint, server_pair

    ca, _ = ensure_self_signed(tmp_path / "ca")
    for i in range(8):  # whether the old decoding went wrong depended on the certificate's length
        cert, key = ensure_self_signed(tmp_path / f"node{i}")
        own = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
        chain = tmp_path / f"fullchain{i}.pem"
        chain.write_text(cert.read_text() + ca.read_text())
        assert fingerprint(chain) == own
        assert server_pair(chain, key, tmp_path / "state")[2] == own
        bagged = tmp_path / f"bagged{i}.pem"  # openssl pkcs12 -nokeys writes attributes before it
        bagged.write_text("Bag Attributes\n    localKeyID: 01\nsubject=CN = localhost\n" + cert.read_text())
        assert fingerprint(bagged) == own


def test_a_rung_bitrate_may_be_a_number(tmp_path):
    """kbit/s per rung as an operator writes it ("480p" = 1000) or as the docs did ("1000")."""
    for value in ("1000", '"1000"'):
        path = write(tmp_path, f'[transcode]\nladder = "480p"\n[transcode.bitrates]\n"480p" = {value}\n')
        assert load_config(path, env={}).transcode.bitrates == {"480p": "1000"}
    with pytest.raises(ConfigError, match="transcode.bitrates"):
        load_config(write(tmp_path, '[transcode]\nladder = "480p"\n[transcode.bitrates]\n"480p" = true\n'), env={})


def test_the_transcode_tables_name_rungs_of_the_ladder_the_node_makes(tmp_path):
    """[transcode.bitrates] and [transcode.presets] are checked against the ladder the node makes:
    without ``ladder``, `rtmpq transcode`'s 720p,480p,360p (before, a bitrate for its 480p was
    refused as "not in the ladder", so only a file that also set the ladder could tune it); and a
    preset for a rung not in it is refused as a bitrate is (before, it was ignored without a word)."""
    from rtmpq.nodes.transcode import ladder_of
    from rtmpq.transcode.ladder import DEFAULT_LADDER

    config = load_config(write(tmp_path, '[transcode.bitrates]\n"480p" = 900\n[transcode.presets]\n"360p" = "fast"\n'),
                         env={})
    assert {r.name: r.bitrate for r in ladder_of(config.transcode, DEFAULT_LADDER)}["480p"] == 900_000
    with pytest.raises(ConfigError, match=r"transcode\.bitrates: 1080p is not in the ladder \(720p,480p,360p"):
        load_config(write(tmp_path, '[transcode.bitrates]\n"1080p" = 5000\n'), env={})
    with pytest.raises(ConfigError, match=r"transcode\.presets: 360p is not in the ladder \(480p\)"):
        load_config(write(tmp_path, '[transcode]\nladder = "480p"\n[transcode.presets]\n"360p" = "fast"\n'), env={})


def _start_together(barrier, directory, out) -> None:
    from rtmpq.moq.tls import server_pair

    barrier.wait()
    out.put(server_pair(None, None, directory)[2])


def test_nodes_that_share_a_new_state_dir_and_start_together_serve_one_certificate(tmp_path):
    """Two nodes started at once on a fresh shared state dir each made a self-signed pair: one
    logged (and could serve) a certificate the file no longer held, so a client pinning the file
    (`--cafile state/tls/cert.pem`) was refused by it; the key was readable by all until its chmod."""
    import multiprocessing

    from rtmpq.moq.tls import fingerprint

    ctx = multiprocessing.get_context("spawn")  # fork() in a threaded pytest worker may deadlock
    nodes = 4
    barrier, out = ctx.Barrier(nodes), ctx.Queue()
    procs = [ctx.Process(target=_start_together, args=(barrier, tmp_path, out)) for _ in range(nodes)]
    for p in procs:
        p.start()
    logged = [out.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(10)
    tls = tmp_path / "tls"
    assert logged == [fingerprint(tls / "cert.pem")] * nodes
    assert sorted(p.name for p in tls.iterdir() if p.name.endswith(".pem")) == ["cert.pem", "key.pem"]
    assert (tls / "key.pem").stat().st_mode & 0o777 == 0o600
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls / "cert.pem", tls / "key.pem")  # one pair


def test_a_moq_certificate_that_does_not_load_stops_up_before_any_listener(tmp_path):
    """`rtmpq up --cert missing.pem`: its log said "RTMP listening on ..." and "LL-HLS on ...", then
    it exited on the certificate; now the setting is named before anything listens."""
    from .conftest import free_port

    out = run_cli("up", "--rtmp", f"127.0.0.1:{free_port()}", "--moq", "127.0.0.1:0", "--http",
                  f"127.0.0.1:{free_port()}", "--quic-backend", "aioquic", "--state-dir", str(tmp_path),
                  "--cert", str(tmp_path / "missing.pem"), "--key", str(tmp_path / "missing.key"))
    assert out.returncode == 1, out.stderr
    assert f"moq.certfile/moq.keyfile (--cert/--key): cannot load {tmp_path / 'missing.pem'}" in out.stderr, out.stderr
    assert "listening" not in out.stderr and "LL-HLS on" not in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("kind", ["up", "ingest", "relay"])
def test_an_https_certificate_that_does_not_load_stops_a_node_before_any_listener(tmp_path, kind):
    """`rtmpq up --http-cert missing.pem`: its log said "RTMP listening on ..." (and an ingest's
    "ingest ready"), then it exited on the certificate; now the setting is named before anything listens."""
    from .conftest import free_port

    moq = ["--moq", "127.0.0.1:0", "--quic-backend", "aioquic", "--state-dir", str(tmp_path)]
    where = {"up": ["--rtmp", f"127.0.0.1:{free_port()}", *moq], "ingest": ["--rtmp", f"127.0.0.1:{free_port()}"],
             "relay": moq}[kind]
    out = run_cli(kind, *where, "--http", f"127.0.0.1:{free_port()}",
                  "--http-cert", str(tmp_path / "missing.pem"), "--http-key", str(tmp_path / "missing.key"))
    assert out.returncode == 1, out.stderr
    assert f"http.certfile/http.keyfile (--http-cert/--http-key): cannot load {tmp_path / 'missing.pem'}" \
        in out.stderr, out.stderr
    for said in ("listening", "LL-HLS on", "ingest ready", "MoQ relay", "Traceback"):
        assert said not in out.stderr, out.stderr


async def test_a_node_log_at_info_has_no_line_per_quic_connection_from_aioquic(tmp_path):
    """aioquic's own INFO lines ("quic: [3f2a...] Negotiated protocol version", "ALPN negotiated",
    "Connection close sent") came three per MoQ session, naming no peer: noise in an operator's
    log at the default level. `--log-level DEBUG` still shows them."""
    import asyncio

    from .conftest import start_up_node

    node = await start_up_node(tmp_path, "aioquic")
    try:
        url = f"moqt://127.0.0.1:{node.moq_address[1]}/live/nobody"
        for level, shown in (("INFO", False), ("DEBUG", True)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rtmpq", "--log-level", level, "sub", url, "--insecure", "--quic-backend",
                "aioquic", "--seconds", "0.5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out = (await asyncio.wait_for(proc.communicate(), 20))[0].decode()
            assert "is not live yet" in out, out  # (it did connect)
            assert ("ALPN negotiated protocol moqt-16" in out) is shown, out
    finally:
        await node.close()


def test_a_malformed_node_token_is_refused_at_start_without_being_printed(tmp_path):
    """[auth] node_token = a stream key, a truncated JWT, a token with no act: it was taken, and the
    node's every link upstream (up's ladder child publishing its rungs) was refused "token refused:
    malformed", which the operator saw only there. A well-formed token signed with another secret
    (its upstream's) is still taken: only its shape can be checked here."""
    import base64
    import json

    from rtmpq.auth.tokens import mint_token

    good = mint_token("the upstream's secret, not ours", "", "relay", 60, now=time.time())
    assert load_config(env={"RTMPQ_AUTH_NODE_TOKEN": good}).auth.node_token == good
    head, claims, sig = good.split(".")
    no_act = base64.urlsafe_b64encode(json.dumps({"sub": "", "exp": 1}).encode()).decode().rstrip("=")
    for bad, why in (("sk-1f9c2a-secret", "is not a JWT"), (good[:-len(sig) - 1], "is not a JWT"),
                     (f"{head}.{no_act}.{sig}", "has no 'act' claim"), (f"{head}.{claims[:-3]}.{sig}", "not valid")):
        with pytest.raises(ConfigError, match="auth.node_token") as caught:
            load_config(env={"RTMPQ_AUTH_NODE_TOKEN": bad})
        assert why in str(caught.value) and bad not in str(caught.value), caught.value
    path = write(tmp_path, '[auth]\nnode_token = "sk-1f9c2a-secret"\n')
    out = run_cli("up", "--config", str(path), "--state-dir", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "auth.node_token" in out.stderr and "sk-1f9c2a" not in out.stderr + out.stdout, out.stderr
    assert "listening" not in out.stderr, out.stderr


def test_config_check_names_each_setting_whose_file_a_node_could_not_use(tmp_path):
    """`rtmpq config check`: there was only `config show`, which passes a file whose certificate is
    missing or whose record_dir cannot be written; a node found them only when started."""
    good = write(tmp_path, f'[moq]\nstate_dir = "{tmp_path / "state"}"\n[rtmp]\nrecord_dir = "{tmp_path / "rec"}"\n')
    ok = run_cli("config", "check", "--config", str(good))
    assert ok.returncode == 0 and f"configuration OK ({good})" in ok.stdout, ok.stdout + ok.stderr
    assert not (tmp_path / "state").exists()  # (no certificate made: a node makes it at its first start)
    afile = tmp_path / "afile"
    afile.write_text("not PEM")
    bad = write(tmp_path, f'[moq]\nstate_dir = "{afile / "state"}"\n[rtmp]\nrecord_dir = "{afile / "rec"}"\n'
                          f'[http]\ncertfile = "{tmp_path / "missing.pem"}"\nkeyfile = "{afile}"\n'
                          f'[publish]\nhook_cafile = "{afile}"\n')
    out = run_cli("config", "check", "--config", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "http.certfile/http.keyfile (--http-cert/--http-key)", "moq.state_dir (--state-dir)",
        "rtmp.record_dir (--record)", "publish.hook_cafile"], lines
    assert f"cannot load {tmp_path / 'missing.pem'}" in lines[0] and "Not a directory" in lines[2], lines


def test_a_relay_whose_upstream_is_its_own_listener_does_not_start(tmp_path):
    """One config file for every node (docs: "one file serves every node"), with the [upstream] url
    the ingest and the edge use: the relay that file names as upstream subscribed to itself, in a
    loop, its log saying only "NAMESPACE_DONE for a namespace never announced"."""
    from .conftest import free_port

    port = free_port(socket.SOCK_DGRAM)
    shared = write(tmp_path, f'[moq]\nport = {port}\n[upstream]\nurl = "moqt://127.0.0.1:{port}"\ninsecure = true\n')
    out = run_cli("relay", "--config", str(shared), "--moq", f"127.0.0.1:{port}", "--state-dir", str(tmp_path),
                  "--quic-backend", "aioquic")
    assert out.returncode == 1, out.stderr  # (as for a certificate that does not load: found at start)
    assert f"upstream.url (--upstream) moqt://127.0.0.1:{port} is this relay's own MoQ listener" in out.stderr
    assert " on udp " not in out.stderr and "Traceback" not in out.stderr, out.stderr
    from rtmpq.config import MoqConfig
    from rtmpq.nodes.nodes import upstream_is_itself

    moq = MoqConfig(host="0.0.0.0", port=4443)
    assert [upstream_is_itself(url, moq) for url in ("moqt://localhost:4443", "moqt://[::1]:4443",
                                                      "moqt://10.0.0.5:4443", "moqt://origin:4443",
                                                      "moqt://127.0.0.1:4444")] == [True, True, False, False, False]


def test_config_check_says_a_short_secret_can_be_guessed(tmp_path):
    """A node warns at start of an [auth] secret under 32 bytes; `config check` said "configuration
    OK" of a 3-byte one (the secrets audit). It still passes (a node starts with it), and says so."""
    short = run_cli("config", "check", "--config", str(write(tmp_path, '[auth]\nsecret = "abc"\n')))
    assert short.returncode == 0 and "configuration OK" in short.stdout, short.stdout + short.stderr
    assert "auth.secret is short" in short.stderr and "abc" not in short.stderr, short.stderr
    long = run_cli("config", "check", "--config", str(write(tmp_path, f'[auth]\nsecret = "{"x" * 32}"\n')))
    assert long.returncode == 0 and "short" not in long.stderr, long.stderr
