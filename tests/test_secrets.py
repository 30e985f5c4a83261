"""Configured secrets are masked by value, and in their encodings, wherever text leaves.

Patterns (``r8_``, ``Bearer``) only catch keys that look like keys; these tests use
a key of no recognisable shape, as a provider echoing ``Invalid credential <key>``
would send it back.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.parse
from typing import Any

import pytest

from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.providers import make_adapter
from actors.providers.base import ProviderSettings
from actors.redaction import MASK, SECRETS, Secrets, encodings, redact, redact_text
from daemon.api.errors import json_response
from daemon.logs import configure_logging

KEY = "Ek9x/q+Zw&Plain-Looking=Value"


def forms(value: str) -> list[str]:
    """The encodings a leak could take (what the grep of the end-to-end test looks for)."""
    raw = value.encode()
    return [
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        json.dumps(value)[1:-1],
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(b"user:" + raw).decode(),  # a Basic-auth header
        base64.b64encode(b"ab" + raw + b"}").decode(),
        base64.urlsafe_b64encode(b'{"iss":"' + raw + b'"}').decode(),  # a JWT payload
    ]


@pytest.fixture
def secrets() -> Secrets:
    registry = Secrets()
    registry.add(KEY)
    return registry


@pytest.mark.parametrize("index", range(len(forms(KEY))))
def test_every_encoding_of_a_secret_is_masked(secrets: Secrets, index: int) -> None:
    form = forms(KEY)[index]
    masked = secrets.mask(f"401 Invalid credential {form} (see docs)")
    assert KEY not in masked and MASK in masked
    for leak in forms(KEY):
        # What is left of the encoded form no longer carries the key's bytes.
        assert leak not in masked


def test_each_half_of_a_key_pair_is_masked() -> None:
    registry = Secrets()
    registry.add("fal-key-id-123:fal-key-secret-456")
    assert registry.mask("id fal-key-id-123, secret fal-key-secret-456") == "id ***, secret ***"


def test_short_values_are_not_masked_by_value() -> None:
    registry = Secrets()
    registry.add("abc")
    registry.add("")
    assert registry.mask("abc abcdef") == "abc abcdef"


def test_encodings_hold_the_plain_value_and_its_fragments() -> None:
    found = encodings(KEY)
    assert KEY in found and urllib.parse.quote(KEY, safe="") in found
    assert all(len(text) >= 8 for text in found)


def test_the_process_registry_masks_logs_and_errors() -> None:
    key = "zq7-echo-" + "k" * 8
    SECRETS.add(key)
    # Text that no pattern would touch.
    assert redact_text(f"Invalid credential {key}") == f"Invalid credential {MASK}"
    assert redact({"body": [f"said {key}"]}) == {"body": [f"said {MASK}"]}
    info = ErrorInfo(ErrorCode.AUTHENTICATION_FAILED, f"bfl: Invalid credential {key}",
                     {"body": json.dumps({"detail": key}), "nested": {"list": [key]}})
    assert key not in json.dumps(info.to_json())
    error = EaselError(ErrorCode.PROVIDER_ERROR, f"pollo: {key}", {"provider": "pollo"})
    assert key not in str(error) and key not in repr(error.args)


async def test_json_answers_are_masked() -> None:
    key = "answer-" + "Q" * 10
    SECRETS.add(key)
    response = json_response({"health": {"lastError": f"x {key} y"}})
    body = await response.get_data()
    assert key.encode() not in body and MASK.encode() in body


def test_a_secret_added_later_is_masked_in_a_cached_message() -> None:
    stream = io.StringIO()
    key = "later-added-" + "s" * 8
    message = f"constant message with {key}"
    with configure_logging("INFO", None, stream=stream):
        logging.getLogger("test").info(message)  # cached as it is: not a secret yet
        SECRETS.add(key)
        logging.getLogger("test").info(message)
    first, second = stream.getvalue().splitlines()
    assert key not in second and MASK in json.loads(second)["msg"]


def test_the_log_writer_masks_what_capture_cannot_see() -> None:
    """A context variable or an extra whose name says nothing: the writer's pass."""
    stream = io.StringIO()
    key = "writer-pass-" + "w" * 8
    SECRETS.add(key)
    with configure_logging("INFO", None, stream=stream):
        logging.getLogger("test").info("plain", extra={"harmless": {"deep": [key]}})
    assert key not in stream.getvalue()


def test_building_an_adapter_registers_its_section_credentials() -> None:
    settings = ProviderSettings(base_url="http://127.0.0.1:9", api_key="adapter-key-" + "a" * 8,
                                webhook_secret="adapter-hook-" + "h" * 8)
    make_adapter("bfl", settings, "bfl")
    assert settings.api_key not in redact_text(f"echo {settings.api_key}")
    assert settings.webhook_secret not in redact_text(f"echo {settings.webhook_secret}")


def test_easel_keys_and_the_metrics_token_are_masked(tmp_path: Any) -> None:
    from actors.keys import KeyLimits, Scope, new_key
    from daemon.config import load

    _record, token = new_key("ci", frozenset({Scope.READ}), KeyLimits(), created_at=0.0)
    secret = token[len("easel_") + 13:]
    assert secret not in redact_text(f"key {token} was refused")
    scraper = "scrape-" + "s" * 12
    path = tmp_path / "easel.toml"
    smtp = "smtp-" + "p" * 12
    slack = "https://hooks.slack.com/services/T0/B0/" + "x" * 24
    path.write_text(f'[auth]\nmetrics_token = "{scraper}"\n'
                    f'[monitoring.email]\npassword = "{smtp}"\n'
                    f'[monitoring.slack]\nwebhook_url = "{slack}"\n')
    load(path, {})
    for secret in (scraper, smtp, "x" * 24):
        assert secret not in redact_text(f"echo {secret}")
    assert "x" * 24 not in redact_text(f"posting to {slack}")
    # Only the token: the host, and loopback URLs of anything else, stay readable.
    assert "http://127.0.0.1:8700/media/" in redact_text("at http://127.0.0.1:8700/media/")


async def test_input_image_urls_with_credentials_are_refused_and_never_logged(
    easel_daemon: Any,
) -> None:
    stream = io.StringIO()
    easel = await easel_daemon("[providers.sandbox]\ndelay = 30\n")
    url = "https://bob:hunter2-in-url@images.example/cat.png"
    with configure_logging("DEBUG", None, stream=stream):
        answer = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a cat",
                                     "input_images": [url]})
        logging.getLogger("test").warning("the client sent %s", url)  # any path that logs it
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "INVALID_PARAMETERS"
    assert "credentials" in answer.text and "hunter2" not in answer.text
    assert "hunter2" not in stream.getvalue() and "https://***@images.example" in stream.getvalue()
