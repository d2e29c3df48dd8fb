"""Notifications: Slack-compatible payloads, the HMAC signature, redaction, backoff, settings."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from core import notify
from core.adapters.settings_source import load_settings
from core.controller.notify import body
from core.errors import ValidationError
from core.notify import (
    Notification,
    next_attempt_delay,
    retry_horizon_s,
    sign,
    slack_payload,
    verify,
)
from core.notify_settings import NotifySettings
from core.states import NotificationKind

SECRET = "s3cret-signing-key-0123456789"
CONSOLE = "https://console.example.test"


def test_approval_waiting_payload_has_text_blocks_fields_and_a_link_to_the_page() -> None:
    n = notify.approval_waiting(object_type="rollout", object_id="42",
                                summary="canary on h100-0, gates passed",
                                fields=(("Strategy", "canary"), ("Nodes", "h100-0")))
    payload = slack_payload(n, console_url=CONSOLE)
    assert set(payload) == {"text", "blocks"}
    assert "Rollout plan 42 is waiting for approval" in payload["text"]
    assert f"{CONSOLE}/rollouts" in payload["text"]
    kinds = [b["type"] for b in payload["blocks"]]
    assert kinds[0] == "header" and "section" in kinds and kinds[-1] == "actions"
    assert payload["blocks"][0]["text"] == {"type": "plain_text", "emoji": False,
                                            "text": "Rollout plan 42 is waiting for approval"}
    fields = next(b["fields"] for b in payload["blocks"] if "fields" in b)
    assert {"type": "mrkdwn", "text": "*Strategy*\ncanary"} in fields
    button = payload["blocks"][-1]["elements"][0]
    assert button["type"] == "button" and button["url"] == f"{CONSOLE}/rollouts"
    assert f"<{CONSOLE}/rollouts|Open the Rollouts page>" in payload["blocks"][1]["text"]["text"]


@pytest.mark.parametrize(("n", "page"), [
    (notify.approval_waiting(object_type="weights", object_id="7", summary="-3 % cost"),
     "weights"),
    (notify.rollout_failed(plan_id="3", reason="validation failed on a100-1"), "rollouts"),
    (notify.rolled_back(plan_id="3", reason="success rate 0.91 < 0.95"), "rollouts"),
    (notify.breaker_opened(failures=3, reason="three failed updates in a row",
                           cooldown_until="2026-12-01T20:00:00+00:00"), "rollouts"),
    (notify.critical_alert(name="LowSuccessRate", summary="success 0.90",
                           labels={"model_name": "llama"}, started_at="2026-12-01T19:00"),
     "overview"),
])
def test_every_kind_links_to_the_page_that_acts_on_it(n: Notification, page: str) -> None:
    assert n.page == page
    payload = slack_payload(n, console_url=CONSOLE + "/")
    assert payload["blocks"][-1]["elements"][0]["url"] == f"{CONSOLE}/{page}"
    assert Notification.from_json(json.loads(json.dumps(n.to_json()))) == n


def test_signature_is_hmac_sha256_over_timestamp_dot_body_and_verifies() -> None:
    data = b'{"text":"hello"}'
    signature = sign(data, secret=SECRET, timestamp=1_800_000_000)
    expected = hmac.new(SECRET.encode(), b"1800000000." + data, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, "sha256=" + expected)
    assert verify(data, secret=SECRET, timestamp="1800000000", signature=signature)
    assert not verify(data + b" ", secret=SECRET, timestamp=1_800_000_000,
                      signature=signature)
    assert not verify(data, secret=SECRET, timestamp=1_800_000_001, signature=signature)
    assert not verify(data, secret=SECRET + "x", timestamp=1_800_000_000,
                      signature=signature)
    assert not verify(data, secret=SECRET, timestamp="soon", signature=signature)


def test_texts_are_redacted_and_the_payload_holds_no_secret() -> None:
    leaky = "connect to postgresql://gsc:hunter2-password@db:5432/gsc failed; " \
            "see https://hooks.example.test/x?token=tok-abc123"
    n = notify.rollout_failed(plan_id="9", reason=leaky,
                              fields=(("Store", "postgresql://gsc:hunter2-password@db/gsc"),))
    data = body(n, console_url=CONSOLE)
    assert b"hunter2-password" not in data and b"tok-abc123" not in data
    assert b"postgresql://***@db:5432/gsc" in data
    assert b"token=***" in data
    assert SECRET.encode() not in data  # the secret is never an input of the payload
    assert "hunter2" not in json.dumps(n.to_json())  # redacted when made, stored redacted


def test_mrkdwn_control_characters_are_escaped_and_long_texts_cut() -> None:
    n = notify.rollout_failed(plan_id="1", reason="<!channel> & " + "x" * 5000)
    payload = slack_payload(n, console_url=CONSOLE)
    section = payload["blocks"][1]["text"]["text"]
    assert section.startswith("&lt;!channel&gt; &amp; ")
    assert len(section) <= 3000 and len(payload["blocks"][0]["text"]["text"]) <= 150
    assert section.endswith(f"<{CONSOLE}/rollouts|Open the Rollouts page>")


def test_a_notification_refuses_an_unknown_page_or_kind_naming_the_field() -> None:
    with pytest.raises(ValidationError) as page:
        Notification(kind=NotificationKind.ROLLOUT_FAILED, title="t", text="", page="costs",
                     object_type="rollout", object_id="1")
    assert page.value.field == "notification.page"
    with pytest.raises(ValidationError) as kind:
        Notification.from_json({"kind": "party", "title": "t", "text": "", "page": "overview",
                                "object_type": "x", "object_id": "1", "fields": []})
    assert kind.value.field == "notification.kind"
    with pytest.raises(ValidationError) as missing:
        Notification.from_json({"kind": "rollout-failed", "title": "t"})
    assert missing.value.field == "notification.text"


def test_backoff_follows_the_list_then_repeats_its_last_delay() -> None:
    backoff = (5.0, 15.0, 60.0, 300.0, 900.0)
    assert [next_attempt_delay(i, backoff) for i in range(1, 8)] == \
        [5.0, 15.0, 60.0, 300.0, 900.0, 900.0, 900.0]
    assert retry_horizon_s(12, backoff) == 5 + 15 + 60 + 300 + 900 * 7
    assert retry_horizon_s(1, backoff) == 0
    with pytest.raises(ValidationError):
        next_attempt_delay(0, backoff)
    with pytest.raises(ValidationError):
        next_attempt_delay(1, ())


def test_settings_refuse_unknown_keys_bad_urls_short_secrets_and_a_too_short_max_age() -> None:
    with pytest.raises(ValidationError) as unknown:
        NotifySettings.from_mapping({"webhook": "https://x"})
    assert unknown.value.field == "notify.webhook"
    with pytest.raises(ValidationError) as scheme:
        NotifySettings(webhook_url="file:///etc/passwd")
    assert scheme.value.field == "GSC_NOTIFY_WEBHOOK_URL (notify.webhook_url)"
    with pytest.raises(ValidationError) as short:
        NotifySettings(secret="abc")
    assert short.value.field == "GSC_NOTIFY_SECRET (notify.secret)"
    with pytest.raises(ValidationError) as creds:
        NotifySettings(console_url="https://user:pw@console")
    assert creds.value.field == "notify.console_url"
    with pytest.raises(ValidationError) as backoff:
        NotifySettings(backoff_s=[5, -1])
    assert backoff.value.field == "notify.backoff_s[1]"
    with pytest.raises(ValidationError) as age:
        NotifySettings(max_age_s=3600)  # the default retries span 6680 s
    assert age.value.field == "notify.max_age_s"


def test_settings_from_the_environment_keep_the_secret_out_of_repr() -> None:
    url = "https://hooks.slack.example/services/T000/B000/XXXXSECRETTOKEN"
    settings = load_settings(env={"GSC_NOTIFY_WEBHOOK_URL": url, "GSC_NOTIFY_SECRET": SECRET})
    assert settings.notify.enabled and settings.notify.signed
    assert settings.notify.webhook_url == url and settings.notify.secret == SECRET
    assert "XXXXSECRETTOKEN" not in repr(settings) and SECRET not in repr(settings)
    off = load_settings(env={})
    assert not off.notify.enabled and off.notify.backoff_s == (5.0, 15.0, 60.0, 300.0, 900.0)


def test_a_producer_never_fails_over_too_many_fields_or_numbers_as_values() -> None:
    n = notify.rollout_failed(plan_id="5", reason="x",
                              fields=[(f"node {i}", i) for i in range(14)])
    assert len(n.fields) == 10 and n.fields[3] == ("node 3", "3")
