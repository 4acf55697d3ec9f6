"""Configuration: TOML + environment, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedispatch import config
from edgedispatch.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgedispatch.toml"
    path.write_text(text)
    return path


def test_dev_defaults() -> None:
    cfg = config.load(dev=True, env={})
    assert cfg.keys == {"devkey": "secret"} and cfg.server.bind == "127.0.0.1"
    assert cfg.server.port == 7880 and cfg.dispatch.queue_timeout == 60
    assert cfg.room.empty_timeout == 300 and cfg.dispatch.load_threshold == 0.7


def test_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 9000
public_url = "wss://rooms.example.com"
[dispatch]
queue_timeout = 5
agent_slots = { "big-agent" = 8 }
[keys]
filekey = "filesecret"
""",
    )
    cfg = config.load(path, env={"EDGEDISPATCH_KEYS": "k1: s1, k2: s2"})
    assert cfg.server.port == 9000 and cfg.server.bind == "0.0.0.0"
    assert cfg.dispatch.queue_timeout == 5.0 and cfg.dispatch.agent_slots == {"big-agent": 8}
    assert cfg.keys == {"filekey": "filesecret", "k1": "s1", "k2": "s2"}
    assert config.load(path, env={}, overrides={"port": 0}).server.port == 0


@pytest.mark.parametrize(
    "text, key",
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ('[dispatch]\nqueue_timeout = "soon"\n', "dispatch.queue_timeout"),
        ("[dispatch]\nload_threshold = 1.5\n", "dispatch.load_threshold"),
        ("[dispatch]\nworker_slots = 0\n", "dispatch.worker_slots"),
        ("[dispatch]\nagent_slots = { a = -1 }\n", "dispatch.agent_slots.a"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\npublic_url = "ftp://x"\n', "server.public_url"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
        ("[rtc]\nping_interval = 0\n", "rtc.ping_interval"),
        ("[rtc]\nping_interval = 20\nping_timeout = 10\n", "rtc.ping_interval"),
        ('[[rtc.ice_servers]]\nurls = ["http://x"]\n', "rtc.ice_servers[0]"),
        ('[webhook]\nurls = ["ftp://x"]\n', "webhook.urls"),
        ("[rtc]\nudp_ports = [5000]\n", "rtc.udp_ports"),
        ("[rtc]\nudp_ports = [6000, 5000]\n", "rtc.udp_ports"),
        ("[webhook]\nattempts = 0\n", "webhook.attempts"),
        ("nonsense = [", "edgedispatch.toml"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), dev=True, env={})
    assert info.value.key.endswith(key), info.value


def test_no_keys_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env={})
    assert info.value.key == "keys"


def test_bad_key_list_in_the_environment() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env={"EDGEDISPATCH_KEYS": "just-a-key"})
    assert info.value.key == "EDGEDISPATCH_KEYS"


def test_tenants(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[keys]
admin = "admin-secret"
[[tenants]]
name = "acme"
keys = { acme-key = "s1" }
[[tenants]]
name = "globex"
keys = { globex-key = "s2", globex-2 = "s3" }
""",
    )
    cfg = config.load(path, env={})
    assert cfg.key_tenants() == {
        "admin": "",
        "acme-key": "acme",
        "globex-key": "globex",
        "globex-2": "globex",
    }
    assert cfg.secrets()["globex-2"] == "s3"
    # What each may add through the API: nothing of its own code by default.
    assert not cfg.tenant("acme").allow_code and cfg.tenant("acme").native_modules == []
    assert cfg.tenant("").keys == {"admin": "admin-secret"}  # the operator's


def test_tenant_grants(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[keys]
admin = "s"
[[tenants]]
name = "acme"
keys = { acme-key = "s1" }
allow_code = true
native_modules = ["acme_agents", "shared.voice"]
""",
    )
    acme = config.load(path, env={}).tenant("acme")
    assert acme.allow_code and acme.native_modules == ["acme_agents", "shared.voice"]


@pytest.mark.parametrize(
    "text, key",
    [
        (
            '[[tenants]]\nname = "a"\nkeys = { k = "s" }\n[[tenants]]\nname = "b"\n'
            'keys = { k = "t" }\n',
            "tenants[1].keys",
        ),
        (
            '[[tenants]]\nname = "a"\nkeys = { k = "s" }\n[[tenants]]\nname = "a"\n',
            "tenants[1].name",
        ),
        ('[[tenants]]\nname = ""\nkeys = { k = "s" }\n', "tenants[0].name"),
        (
            '[[tenants]]\nname = "a"\nkeys = { k = "s" }\nnative_modules = ["ok", "bad name"]\n',
            "tenants[0].native_modules[1]",
        ),
    ],
)
def test_bad_tenants(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), env={})
    assert info.value.key == key


def test_the_example_config_loads_as_documented() -> None:
    example = Path(__file__).parents[2] / "edgedispatch.example.toml"
    cfg = config.load(str(example), env={"EDGEDISPATCH_KEYS": "k: s"})  # its keys are commented out
    assert cfg.sandbox == config.SandboxConfig()  # it shows the defaults
    assert cfg.metrics == config.MetricsConfig()
    assert cfg.server == config.ServerConfig(bind="0.0.0.0")
