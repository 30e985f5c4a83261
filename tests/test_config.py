"""daemon/config.py: shipped defaults, merging, ${VAR} interpolation, errors with key
paths, and ``easel check-config``.

Every ``load`` here names an explicit file so that /etc/easel/easel.toml on the host
never leaks in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actors.catalog import MediaKind, PollingStrategy
from daemon.config import ConfigError, interpolate, load, merge


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "easel.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ=environ or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# -- loading ----------------------------------------------------------------


def test_shipped_defaults_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), environ={})
    assert config.daemon.bind == ["127.0.0.1:8700"]
    assert config.daemon.drain_timeout == 30
    assert config.daemon.max_restarts == 5
    assert config.logging.level == "INFO"
    assert {"sandbox", "replicate"} <= set(config.providers)
    assert config.providers["sandbox"].max_in_flight == 64
    assert config.providers["replicate"].rate == 10.0
    assert isinstance(config.providers["replicate"].rate, float)
    image = config.models["sandbox-image"]
    assert image.provider == "sandbox" and image.kind is MediaKind.IMAGE
    video = config.models["sandbox-video"]
    assert video.polling is not None and video.polling.strategy is PollingStrategy.FIXED
    for name, model in config.models.items():
        assert model.provider in config.providers, name
    assert config.log_file == Path(".easel-state") / "logs" / "easel.log"
    assert config.adapter_name("replicate") == "replicate"


def test_load_without_path_gives_the_shipped_defaults(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    import daemon.config as config_module

    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    config = load(None, environ={})
    assert config.daemon.bind == ["127.0.0.1:8700"]
    assert "sandbox-image" in config.models


def test_system_config_is_read_when_no_path_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import daemon.config as config_module

    system = tmp_path / "system.toml"
    system.write_text('[daemon]\nbind = ["127.0.0.1:9999"]\n')
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    assert load(None, environ={}).daemon.bind == ["127.0.0.1:9999"]


def test_user_file_merges_over_defaults(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
[daemon]
bind = ["unix:/run/easel.sock", "0.0.0.0:9000"]

[providers.replicate]
rate = 2.5

[providers.mine]
adapter = "replicate"
base_url = "http://127.0.0.1:1"

[models.sandbox-image]
max_duration = 5

[models.my-model]
provider = "mine"
provider_model = "owner/model"
kind = "video"
polling = { strategy = "exponential", initial = 1, factor = 2, max_interval = 8 }
""",
        ),
        environ={},
    )
    assert config.daemon.bind == ["unix:/run/easel.sock", "0.0.0.0:9000"]
    assert config.daemon.drain_timeout == 30  # untouched keys of the table stay
    replicate = config.providers["replicate"]
    assert replicate.rate == 2.5
    assert replicate.burst == 20  # shipped value kept beside the override
    assert replicate.base_url == "https://api.replicate.com"
    assert config.adapter_name("mine") == "replicate"
    shipped = config.models["sandbox-image"]
    assert shipped.max_duration == 5 and shipped.provider == "sandbox"
    mine = config.models["my-model"]
    assert mine.provider == "mine" and mine.kind is MediaKind.VIDEO
    assert mine.polling is not None and mine.polling.max_interval == 8
    assert "sandbox-video" in config.models  # shipped models are kept


def test_merge_is_deep_for_tables_only() -> None:
    base = {"a": {"x": 1, "y": {"z": 2}}, "l": [1, 2], "s": "old"}
    out = merge(base, {"a": {"y": {"w": 3}}, "l": [9], "s": {"now": "table"}})
    assert out == {"a": {"x": 1, "y": {"z": 2, "w": 3}}, "l": [9], "s": {"now": "table"}}
    assert base == {"a": {"x": 1, "y": {"z": 2}}, "l": [1, 2], "s": "old"}  # not mutated


# -- interpolation ----------------------------------------------------------


def test_env_interpolation_in_the_file(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
[providers.replicate]
api_token = "${TOKEN}"
base_url = "${BASE:-http://sim.local}/v1"
webhook_secret = "${MISSING}"
""",
        ),
        environ={"TOKEN": "r8_secret"},
    )
    replicate = config.providers["replicate"]
    assert replicate.api_token == "r8_secret"
    assert replicate.base_url == "http://sim.local/v1"
    assert replicate.webhook_secret == ""  # unset, no default: empty


def test_shipped_secret_comes_from_the_environment(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), environ={"REPLICATE_API_TOKEN": "tok"})
    assert config.providers["replicate"].api_token == "tok"
    assert load(write(tmp_path, ""), environ={}).providers["replicate"].api_token == ""


def test_interpolate_walks_lists_and_tables_and_leaves_other_values() -> None:
    tree = {"a": ["${X}", {"b": "x=${X:-d} y=${Y:-d}"}], "n": 3, "f": 1.5, "t": True}
    assert interpolate(tree, {"X": "1"}) == {
        "a": ["1", {"b": "x=1 y=d"}],
        "n": 3,
        "f": 1.5,
        "t": True,
    }
    assert interpolate("$X ${not valid} ${}", {"X": "1"}) == "$X ${not valid} ${}"


def test_default_applies_to_an_empty_variable() -> None:
    assert interpolate("${X:-fallback}", {"X": ""}) == "fallback"


# -- errors with key paths ---------------------------------------------------


def test_wrong_type_reports_the_key_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[providers.replicate]\nrate = "fast"\n')
    assert problems == ["providers.replicate.rate: expected a number, got a string"]


def test_wrong_integer_reports_the_key_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[providers.sandbox]\nmax_in_flight = "many"\n')
    assert problems == ["providers.sandbox.max_in_flight: expected an integer, got a string"]


def test_unknown_keys_are_reported_per_table(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, "[daemon]\nbogus = 1\n[providers.replicate]\nrat = 10\nburts = 1\n"
    )
    assert sorted(p.partition(" (known: ")[0] for p in problems) == [
        "daemon: unknown key(s): bogus",
        "providers.replicate: unknown key(s): burts, rat",
    ]
    assert "(known: adapter, enabled, base_url," in problems[1]


def test_unknown_top_level_key_has_no_empty_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "bogus = 1\n")
    assert problems == ["unknown key(s): bogus (known: daemon, logging, media, webhooks, monitoring, "
                        "providers, models)"]


def test_bad_enum_value_lists_the_allowed_ones(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[models.x]\nprovider = "sandbox"\nprovider_model = "y"\nkind = "audio"\n',
    )
    allowed = ", ".join(repr(k.value) for k in MediaKind)
    assert problems == [f"models.x.kind: must be one of {allowed}"]


def test_bad_nested_enum_value(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[models.x]\nprovider = "sandbox"\nprovider_model = "y"\n'
        'polling = { strategy = "linear" }\n',
    )
    allowed = ", ".join(repr(s.value) for s in PollingStrategy)
    assert "'fixed', 'exponential'" in allowed
    assert problems == [f"models.x.polling.strategy: must be one of {allowed}"]


def test_missing_required_key(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[models.x]\nprovider_model = "y"\n')
    assert problems == ["models.x.provider: is required"]


def test_model_naming_a_missing_provider(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[models.x]\nprovider = "nope"\nprovider_model = "y"\n')
    assert problems == ["models.x.provider: no [providers.nope] section"]


def test_bind_given_as_a_string(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[daemon]\nbind = "127.0.0.1:8700"\n')
    assert problems == ["daemon.bind: expected a list of strings"]


def test_bind_entries_are_checked(tmp_path: Path) -> None:
    assert problems_of(tmp_path, '[daemon]\nbind = ["nocolon", "unix:/s", "h:1"]\n') == [
        "daemon.bind[0]: expected HOST:PORT or unix:PATH, got 'nocolon'"
    ]
    assert problems_of(tmp_path, "[daemon]\nbind = []\n") == [
        "daemon.bind: at least one address is needed"
    ]


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[daemon]\nbogus = 1\n[providers.replicate]\nrate = "x"\n'
        '[models.x]\nprovider = "sandbox"\nprovider_model = "y"\nkind = "audio"\n',
    )
    assert sorted(p.partition(" (known: ")[0] for p in problems) == [
        "daemon: unknown key(s): bogus",
        "models.x.kind: must be one of " + ", ".join(repr(k.value) for k in MediaKind),
        "providers.replicate.rate: expected a number, got a string",
    ]


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[daemon\n")
    assert len(problems) == 1 and problems[0].startswith(str(tmp_path / "easel.toml") + ": ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "nope.toml", environ={})
    assert caught.value.problems == [f"{tmp_path / 'nope.toml'}: no such file"]


def test_range_violation_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[providers.replicate]\nrate = -1\n")
    assert len(problems) == 1 and "rate" in problems[0]


def test_range_violation_reports_the_key_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[providers.replicate]\nrate = -1\n")
    assert len(problems) == 1
    assert problems[0].startswith("providers.replicate.rate: ")


def test_string_false_is_not_true(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[providers.replicate]\nenabled = "false"\n')
    assert problems == ["providers.replicate.enabled: expected true or false, got a string"]


def test_float_for_an_integer_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[daemon]\nmax_restarts = 5.5\n")
    assert problems == ["daemon.max_restarts: expected an integer, got a number"]


# -- easel check-config ------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )


def test_check_config_good_file_exits_0(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, '[daemon]\nbind = ["127.0.0.1:8123"]\n'))
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:8123" in result.stdout
    assert result.stderr == ""


def test_check_config_bad_file_exits_2_with_the_path(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, '[providers.replicate]\nrate = "fast"\n'))
    assert result.returncode == 2
    assert "providers.replicate.rate: expected a number, got a string" in result.stderr
    assert result.stdout == ""


# -- the shipped catalog and provider sections ---------------------------------


def test_shipped_catalog_names_every_provider_model() -> None:
    config = load(environ={})
    wanted = {
        "replicate-flux-schnell": ("replicate", "black-forest-labs/flux-schnell"),
        "flux-pro": ("bfl", "flux-pro-1.1"),
        "flux-dev": ("bfl", "flux-dev"),
        "flux-kontext-pro": ("bfl", "flux-kontext-pro"),
        "kling-v2-1-master": ("kling", "kling-v2-1-master"),
        "tuzi-kling-v2-1-master": ("tuzi-kling", "kling-v2-1-master"),
        "pollo-v1-6": ("pollo", "pollo/pollo-v1-6"),
        "gpt-image-1": ("openai", "gpt-image-1"),
        "dall-e-3": ("openai", "dall-e-3"),
        "tuzi-gpt-image": ("tuzi-openai", "gpt-image-1"),
        "fal-flux-dev": ("fal", "fal-ai/flux/dev"),
    }
    found = {name: (config.models[name].provider, config.models[name].provider_model)
             for name in wanted if name in config.models}
    assert found == wanted


def test_shipped_providers_carry_documented_base_urls_and_adapters() -> None:
    config = load(environ={})
    urls = {name: settings.base_url for name, settings in config.providers.items()}
    assert urls["bfl"] == "https://api.bfl.ai"
    assert urls["kling"] == "https://api-singapore.klingai.com"
    assert urls["tuzi-kling"] == "https://api.tu-zi.com/kling"
    assert urls["pollo"] == "https://pollo.ai/api/platform"
    assert urls["openai"] == "https://api.openai.com/v1"
    assert urls["fal"] == "https://queue.fal.run"
    assert config.adapter_name("tuzi-kling") == "kling"
    assert config.providers["tuzi-kling"].auth == "bearer"
    assert config.adapter_name("tuzi-openai") == "openai"


def test_an_overridden_polling_table_replaces_the_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "easel.toml"
    path.write_text('[models.kling-v2-1-master]\npolling = { strategy = "fixed", interval = 5 }\n')
    spec = load(path, environ={}).models["kling-v2-1-master"]
    assert spec.polling is not None
    assert (spec.polling.strategy.value, spec.polling.interval, spec.polling.first_check) == (
        "fixed", 5, None)
    assert spec.max_duration == 1800  # the rest of the shipped entry stays
