"""Fuzzed configuration: TOML text, every setting given odd values of any
type, and the keys' environment variable.  ``config.load`` returns a valid
Config or raises ConfigError naming the setting; no other exception (a
KeyError, a TypeError, msgspec's own) ever reaches the operator."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgedispatch import config
from edgedispatch.errors import ConfigError
from tests.fuzzing import ODD_INTS, fuzz_settings, text

#: Each section's struct, by its name in the file.
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "server": config.ServerConfig,
    "dispatch": config.DispatchConfig,
    "room": config.RoomConfig,
    "logging": config.LoggingConfig,
    "sandbox": config.SandboxConfig,
    "rtc": config.RtcConfig,
    "webhook": config.WebhookConfig,
}
#: The tables of [[tenants]], [[agents]] and [[rtc.ice_servers]].
TABLES: dict[str, type[msgspec.Struct]] = {
    "tenants": config.TenantConfig,
    "agents": config.AgentDefinition,
}


def fields(struct: type[msgspec.Struct]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(struct)]


def toml(value: Any) -> str:
    """``value`` as a TOML value (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # TOML's basic strings take JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


#: TOML values of any type: what a typo or a wrong guess puts in a file.
scalars = st.one_of(
    st.booleans(),
    st.sampled_from([v for v in ODD_INTS if -(2**63) <= v < 2**63]),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    text(["info", "json", "off", "auto", "full", "ws://x", "stun:x", "/", "true"]),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(text(["a", "name", "keys"]), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A config file with some settings of some sections set to odd values."""
    doc: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=3, unique=True)):
        keys = st.sampled_from(fields(SECTIONS[name]) + ["unknown"])
        doc[name] = draw(st.dictionaries(keys, values, max_size=3))
    for name in draw(st.lists(st.sampled_from(sorted(TABLES)), max_size=2, unique=True)):
        keys = st.sampled_from(fields(TABLES[name]))
        doc[name] = draw(st.lists(st.dictionaries(keys, values, max_size=4), max_size=2))
    if draw(st.booleans()):
        doc["keys"] = draw(st.dictionaries(text(["k"]), values, max_size=2))
    if draw(st.booleans()):
        doc[draw(text())] = draw(values)
    return "".join(f"{json.dumps(k, ensure_ascii=False)} = {toml(v)}\n" for k, v in doc.items())


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("config") / "edgedispatch.toml"


def load(path: Path, text: str, keys: str = "") -> config.Config | ConfigError:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    env = {"EDGEDISPATCH_KEYS": keys} if keys else {}
    try:
        return config.load(path, dev=not keys, env=env)
    except ConfigError as exc:
        return exc


def check(result: config.Config | ConfigError, text: str, path: Path) -> None:
    """A valid Config, or an error that names a setting of the file (or the
    file, when it is not TOML; or the keys, when there are none)."""
    if isinstance(result, config.Config):
        assert config.validate(result) is result
        return
    assert result.key and result.msg, result
    if result.key in (str(path), "keys", "EDGEDISPATCH_KEYS"):
        return
    # It parsed: the error is of a setting in it (a name may hold dots).
    names = [n or '""' for n in tomllib.loads(text)]
    key = result.key
    assert any(key == n or key.startswith((f"{n}.", f"{n}[")) for n in names), result


@given(documents(), st.one_of(st.just(""), text(["k: s", "a:b, c:d", ":", ","])))
@example('[server]\nport = "7880"\n', "")
@example('"" = false\n', "")  # was ConfigError("unknown setting") naming nothing
@example('"a`b" = 1\n', "")  # was named "a": a backquote ended the name
@example('agents = [{name = "a", command = ["\\u0000"]}]\n', "")
@fuzz_settings(150)
def test_fuzzed_settings_load_or_name_the_setting(path: Path, doc: str, keys: str) -> None:
    check(load(path, doc, keys), doc, path)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
@fuzz_settings(60)
def test_fuzzed_toml_text_loads_or_names_the_file(path: Path, doc: str) -> None:
    check(load(path, doc), doc, path)
