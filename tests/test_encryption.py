"""Stored responses encrypted at rest, the redaction hook, key rotation and its command,
the admin's redacted view, and the checks: on every database the suite runs on."""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from django_idempotency import checks, encryption
from django_idempotency.admin import CANNOT_DECRYPT
from django_idempotency.management.commands import reencrypt_idempotency_records as command
from django_idempotency.models import IdempotencyRecord, Status
from django_idempotency.operation import Stored
from tests.conftest import assert_problem
from tests.factories import IdempotencyRecordFactory
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
OTHER = Fernet.generate_key().decode()
PACKAGE = Path(__file__).resolve().parent.parent / "django_idempotency"


@pytest.fixture
def keys(settings: Any) -> Any:
    """``keys(*fernet_keys)`` sets ENCRYPTION_KEYS (newest first), keeping other settings."""

    def set_keys(*values: str, **others: Any) -> None:
        settings.IDEMPOTENCY = {"ENCRYPTION_KEYS": list(values), **others}

    return set_keys


def record_of(key: str) -> IdempotencyRecord:
    return IdempotencyRecord.objects.get(key=key)


def completed(headers: dict[str, str], body: bytes | None, **fields: Any) -> IdempotencyRecord:
    """A completed record whose response is stored as the current settings would store it."""
    stored = encryption.seal(Stored(status=201, headers=headers, body=body))
    return IdempotencyRecordFactory(
        completed=True, response_headers=stored.headers, response_body=stored.body, **fields
    )


def drop_amount(response: Any, stored: Stored) -> Stored:
    """A redaction hook: the stored body keeps the order's id, not its amount."""
    data = json.loads(stored.body or b"{}")
    data.pop("amount", None)
    headers = {name: value for name, value in stored.headers.items() if name != "X-Order-Id"}
    return dataclasses.replace(stored, headers=headers, body=json.dumps(data).encode())


def grow(response: Any, stored: Stored) -> Stored:
    return dataclasses.replace(stored, body=(stored.body or b"") * 100)


def not_stored(response: Any, stored: Stored) -> Any:
    return {"body": stored.body}


# ---------------------------------------------------------------- encrypt and replay


@pytest.mark.parametrize("path", ["/orders/", "/orders/single/", "/orders/nonatomic/"])
def test_every_mode_stores_ciphertext_and_replays_the_plaintext(post, keys, path) -> None:
    keys(NEW)
    first = post(path, {"amount": 5}, key="k1")
    assert first.status_code == 201
    record = record_of("k1")
    assert set(record.response_headers) == {encryption.KEY, encryption.HEADERS}
    assert record.response_headers[encryption.KEY] == encryption.key_id(NEW)
    stored = json.dumps(record.response_headers) + bytes(record.response_body).decode()
    for plain in (first.content.decode(), first["Location"], "application/json", "X-Order-Id"):
        assert plain not in stored
    assert record.response_status == 201  # the status endpoint reports it
    again = post(path, {"amount": 5}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert (again.status_code, again.content) == (201, first.content)
    for name in ("Location", "X-Order-Id", "Content-Type"):
        assert again[name] == first[name]
    assert Order.objects.count() == 1


def test_off_by_default_stores_plaintext(post) -> None:
    first = post("/orders/", {"amount": 5}, key="k1")
    record = record_of("k1")
    assert bytes(record.response_body) == first.content
    assert not encryption.is_encrypted(record.response_headers)


def test_plaintext_records_from_before_encryption_still_replay(post, keys) -> None:
    first = post("/orders/headers/", {}, key="k1")
    keys(NEW)
    again = post("/orders/headers/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again["ETag"] == first["ETag"]
    assert Order.objects.count() == 1


def test_a_stream_is_encrypted_and_replayed_byte_for_byte(post, keys) -> None:
    keys(NEW)
    first = post("/orders/stream/", {}, key="k1")
    body = b"".join(first.streaming_content)
    assert bytes(record_of("k1").response_body) != body
    again = post("/orders/stream/", {}, key="k1")
    assert again.content == body
    assert again["Location"] == first["Location"]


def test_a_body_too_large_to_store_keeps_its_location_encrypted(post, keys) -> None:
    keys(NEW, MAX_RESPONSE_BYTES=5)
    first = post("/orders/", {"amount": 5}, key="k1")
    record = record_of("k1")
    assert record.response_body is None
    assert first["Location"] not in json.dumps(record.response_headers)
    again = post("/orders/", {"amount": 5}, key="k1")
    assert again.status_code == 303
    assert again["Location"] == first["Location"]


def test_an_empty_body_round_trips(keys) -> None:
    keys(NEW)
    record = completed({"X-Empty": "yes"}, b"")
    assert encryption.unseal(record.response_headers, record.response_body) == (
        {"X-Empty": "yes"},
        b"",
    )


# ---------------------------------------------------------------- rotation and failures


def test_a_record_under_an_older_key_replays_after_rotation(post, keys) -> None:
    keys(OLD)
    first = post("/orders/", {"amount": 5}, key="k1")
    keys(NEW, OLD)
    again = post("/orders/", {"amount": 5}, key="k1")
    assert again.content == first.content
    post("/orders/", {"amount": 6}, key="k2")
    assert record_of("k2").response_headers[encryption.KEY] == encryption.key_id(NEW)


@pytest.mark.parametrize(
    "configured", [(), (OTHER,)], ids=["encryption turned off", "its key removed"]
)
def test_a_record_no_key_opens_answers_503_and_never_runs_again(
    post, keys, settings, caplog, configured
) -> None:
    keys(OLD)
    post("/orders/", {"amount": 5}, key="k1")
    if configured:
        keys(*configured)
    else:
        settings.IDEMPOTENCY = {}
    with caplog.at_level(logging.ERROR, logger="django_idempotency"):
        again = post("/orders/", {"amount": 5}, key="k1")
    problem = assert_problem(again, 503, "idempotency-unavailable")
    assert "encrypted under a key" in problem["detail"]
    assert problem["response_status"] == 201
    assert again["Retry-After"]
    assert Order.objects.count() == 1
    assert any(str(record_of("k1").pk) in message for message in caplog.messages)
    assert OLD not in caplog.text


def test_an_altered_token_is_refused_not_replayed(post, keys) -> None:
    keys(NEW)
    post("/orders/", {"amount": 5}, key="k1")
    record = record_of("k1")
    altered = bytearray(record.response_body)
    altered[-5] = ord("A") if altered[-5] != ord("A") else ord("B")
    IdempotencyRecord.objects.filter(pk=record.pk).update(response_body=bytes(altered))
    assert_problem(post("/orders/", {"amount": 5}, key="k1"), 503, "idempotency-unavailable")


def test_the_key_never_appears_in_a_record(post, keys) -> None:
    keys(NEW)
    post("/orders/", {"amount": 5}, key="k1")
    record = record_of("k1")
    assert NEW not in json.dumps(record.response_headers)
    assert NEW.encode() not in bytes(record.response_body)


# ---------------------------------------------------------------- once()


def run_once(key: str) -> Any:
    from django_idempotency.once import once

    with once(key, scope="encryption-test") as run:
        if run.first:
            run.result = {"charged": key}
    return run.result


def test_once_results_still_replay_with_encryption_on(keys) -> None:
    keys(NEW)
    assert run_once("m1") == {"charged": "m1"}
    assert run_once("m1") == {"charged": "m1"}


def test_the_command_reencrypts_once_records(keys) -> None:
    keys(OLD)
    run_once("m1")
    keys(NEW, OLD)
    before = record_of("m1").response_headers
    assert "Re-encrypted 1 records" in reencrypt()
    assert record_of("m1").response_headers != before
    assert run_once("m1") == {"charged": "m1"}


def test_once_results_are_encrypted(keys) -> None:
    keys(NEW)
    run_once("m1")
    assert encryption.is_encrypted(record_of("m1").response_headers)


# ---------------------------------------------------------------- redaction hook


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_redact_drops_fields_before_storing_but_not_from_the_first_answer(
    post, settings, encrypted
) -> None:
    settings.IDEMPOTENCY = {
        "REDACT": "tests.test_encryption.drop_amount",
        "ENCRYPTION_KEYS": [NEW] if encrypted else [],
    }
    first = post("/orders/", {"amount": 5}, key="k1")
    assert first.json()["amount"] == 5
    assert "X-Order-Id" in first
    record = record_of("k1")
    headers, body = encryption.unseal(record.response_headers, record.response_body)
    assert b"amount" not in (body or b"")
    assert "X-Order-Id" not in headers
    again = post("/orders/", {"amount": 5}, key="k1")
    assert again.json() == {"id": first.json()["id"]}
    assert "X-Order-Id" not in again
    assert again["Location"] == first["Location"]


def test_redact_takes_a_callable_too(post, settings) -> None:
    settings.IDEMPOTENCY = {"REDACT": drop_amount}
    post("/orders/", {"amount": 5}, key="k1")
    assert b"amount" not in bytes(record_of("k1").response_body)


def test_a_redacted_body_over_the_limit_is_not_stored(post, settings) -> None:
    settings.IDEMPOTENCY = {"REDACT": grow, "MAX_RESPONSE_BYTES": 1000}
    first = post("/orders/", {"amount": 5}, key="k1")
    assert record_of("k1").response_body is None
    assert post("/orders/", {"amount": 5}, key="k1").status_code == 303
    assert first.status_code == 201


def test_a_hook_that_returns_no_stored_fails_the_attempt(post, settings) -> None:
    settings.IDEMPOTENCY = {"REDACT": not_stored}
    with pytest.raises(TypeError, match="REDACT"):
        post("/orders/", {"amount": 5}, key="k1")
    assert not Order.objects.exists()
    assert not IdempotencyRecord.objects.filter(key="k1", status=Status.COMPLETED).exists()


# ---------------------------------------------------------------- without cryptography


@pytest.fixture
def no_cryptography(monkeypatch) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "cryptography"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    encryption._keys_for.cache_clear()
    yield
    encryption._keys_for.cache_clear()


def test_the_package_never_imports_cryptography_at_module_level() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(name.split(".")[0] == "cryptography" for name in names), path


def test_without_cryptography_encryption_off_works(post, no_cryptography) -> None:
    first = post("/orders/", {"amount": 5}, key="k1")
    assert post("/orders/", {"amount": 5}, key="k1").content == first.content
    assert checks.check_settings() == []


def test_without_cryptography_keys_fail_loudly(post, keys, no_cryptography) -> None:
    keys(NEW)
    assert [error.id for error in checks.check_settings()] == ["django_idempotency.E018"]
    with pytest.raises(ImproperlyConfigured, match="encryption"):
        post("/orders/", {"amount": 5}, key="k1")
    assert not Order.objects.exists()
    with pytest.raises(CommandError, match="cryptography"):
        call_command("reencrypt_idempotency_records", stdout=StringIO())


# ---------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "value",
    [
        NEW,  # one key, not a list
        NEW.encode(),
        ["not-a-key"],
        [NEW, NEW[:-4]],
        [NEW, NEW],
        [None],
        42,
    ],
    ids=["str", "bytes", "garbage", "truncated", "duplicate", "None", "int"],
)
def test_e017_malformed_keys(settings, value) -> None:
    settings.IDEMPOTENCY = {"ENCRYPTION_KEYS": value}
    errors = checks.check_settings()
    assert [error.id for error in errors] == ["django_idempotency.E017"]
    assert NEW not in errors[0].msg


@pytest.mark.parametrize(
    "value", [[], (), [NEW], [NEW, OLD], [NEW.encode(), OLD]], ids=["[]", "()", "1", "2", "bytes"]
)
def test_valid_keys_pass_the_checks(settings, value) -> None:
    settings.IDEMPOTENCY = {"ENCRYPTION_KEYS": value}
    assert checks.check_settings() == []


@pytest.mark.parametrize("value", [42, "tests.test_encryption.missing", "no.such.module.f"])
def test_e019_redact_not_callable(settings, value) -> None:
    settings.IDEMPOTENCY = {"REDACT": value}
    assert [error.id for error in checks.check_settings()] == ["django_idempotency.E019"]


@pytest.mark.parametrize("value", [None, "tests.test_encryption.drop_amount", drop_amount])
def test_redact_values_that_pass(settings, value) -> None:
    settings.IDEMPOTENCY = {"REDACT": value}
    assert checks.check_settings() == []


# ---------------------------------------------------------------- the command


def reencrypt(*args: str) -> str:
    out = StringIO()
    call_command("reencrypt_idempotency_records", *args, stdout=out)
    return out.getvalue()


def test_command_reencrypts_old_and_plaintext_records_and_then_finds_nothing(keys) -> None:
    plain = completed({"Content-Type": "text/plain"}, b"plain")
    keys(OLD)
    old = completed({"Content-Type": "text/plain"}, b"old")
    keys(NEW, OLD)
    current = completed({"Content-Type": "text/plain"}, b"new")
    untouched = current.response_headers
    running = IdempotencyRecordFactory()
    assert "Would re-encrypt 2 records: 1 stored in the clear, 1 under an older key" in (
        reencrypt("--dry-run")
    )
    assert "Re-encrypted 2 records in 1 batch(es); 0 changed meanwhile" in reencrypt()
    keys(NEW)  # the old key can go now
    for record, body in ((plain, b"plain"), (old, b"old"), (current, b"new")):
        record.refresh_from_db()
        assert record.response_headers[encryption.KEY] == encryption.key_id(NEW)
        assert encryption.unseal(record.response_headers, record.response_body) == (
            {"Content-Type": "text/plain"},
            body,
        )
    current.refresh_from_db()
    assert current.response_headers == untouched
    running.refresh_from_db()
    assert (running.status, running.response_headers) == (Status.IN_PROGRESS, {})
    assert "Re-encrypted 0 records in 0 batch(es)" in reencrypt()


def test_command_works_in_batches_with_progress(keys) -> None:
    keys(OLD)
    records = [completed({}, f"body {number}".encode()) for number in range(7)]
    keys(NEW, OLD)
    output = reencrypt("--batch-size", "3")
    assert [line.split(":")[0] for line in output.splitlines()[:3]] == [
        "Batch 1",
        "Batch 2",
        "Batch 3",
    ]
    assert "Batch 3: re-encrypted 1 of 1 records (7 so far)" in output
    assert "Re-encrypted 7 records in 3 batch(es)" in output
    assert reencrypt("-v", "0") == ""
    for record in records:
        record.refresh_from_db()
        assert record.response_headers[encryption.KEY] == encryption.key_id(NEW)


def test_command_leaves_records_it_cannot_decrypt_and_says_so(keys) -> None:
    keys(OTHER)
    lost = completed({}, b"lost")
    keys(OLD)
    fine = completed({}, b"fine")
    keys(NEW, OLD)
    out = StringIO()
    with pytest.raises(CommandError, match=rf"1 records could not be decrypted.*{lost.pk}"):
        call_command("reencrypt_idempotency_records", stdout=out)
    assert "Re-encrypted 1 records" in out.getvalue()
    fine.refresh_from_db()
    assert fine.response_headers[encryption.KEY] == encryption.key_id(NEW)
    before = lost.response_headers
    lost.refresh_from_db()
    assert lost.response_headers == before


def test_a_record_changed_after_it_was_read_is_not_overwritten(keys) -> None:
    keys(OLD)
    record = completed({}, b"body")
    stale_copy = IdempotencyRecord.objects.get(pk=record.pk)
    keys(NEW, OLD)
    records = IdempotencyRecord.objects.all()
    assert command.rewrite(records, record)
    written = IdempotencyRecord.objects.get(pk=record.pk).response_headers
    keys(OTHER, NEW, OLD)
    assert not command.rewrite(records, stale_copy)
    assert IdempotencyRecord.objects.get(pk=record.pk).response_headers == written


def test_a_plaintext_record_encrypted_meanwhile_is_not_overwritten(keys) -> None:
    record = completed({}, b"body")
    keys(NEW)
    stale_copy = IdempotencyRecord.objects.get(pk=record.pk)
    assert command.rewrite(IdempotencyRecord.objects.all(), record)
    keys(OTHER)
    assert not command.rewrite(IdempotencyRecord.objects.all(), stale_copy)


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--batch-size", "0"), "--batch-size"), (("--batch-size", "x"), "--batch-size")],
)
def test_command_refuses_bad_batch_sizes(keys, args, message) -> None:
    keys(NEW)
    with pytest.raises(CommandError, match=message):
        reencrypt(*args)


def test_command_needs_keys(settings) -> None:
    settings.IDEMPOTENCY = {}
    with pytest.raises(CommandError, match="empty"):
        reencrypt()
    settings.IDEMPOTENCY = {"ENCRYPTION_KEYS": ["nope"]}
    with pytest.raises(CommandError, match="malformed"):
        reencrypt()


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_beside_live_traffic_rewrite_each_record_once(keys) -> None:
    """Real threads on real connections: two commands over the same rows while requests
    complete new records. Every record ends under the newest key, and the two runs
    together re-encrypted each old record exactly once."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers: nothing runs concurrently")
    from tests.concurrency.threads import new_key, send, together

    keys(OLD)
    old = [completed({"X-N": str(number)}, f"body {number}".encode()) for number in range(40)]
    keys(NEW, OLD)

    def run(index: int) -> Any:
        if index < 2:
            return reencrypt("--batch-size", "5")
        return [send("/orders/", new_key("live")).status for _ in range(5)]

    results = together(4, run)
    done = sum(int(out.split("Re-encrypted ")[-1].split()[0]) for out in results[:2])
    assert done == len(old)
    assert all(status == 201 for statuses in results[2:] for status in statuses)
    for record in IdempotencyRecord.objects.filter(status=Status.COMPLETED):
        assert record.response_headers[encryption.KEY] == encryption.key_id(NEW)
        encryption.unseal(record.response_headers, record.response_body)
    assert IdempotencyRecord.objects.count() == len(old) + 10


# ---------------------------------------------------------------- the admin


def admin_client(*permissions: str, superuser: bool = False) -> Client:
    name = f"user-{len(permissions)}-{superuser}"
    if superuser:
        user = User.objects.create_superuser(name, password="pw")
    else:
        user = User.objects.create_user(name, password="pw", is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def change_page(client: Client, record: IdempotencyRecord) -> str:
    url = reverse("admin:django_idempotency_idempotencyrecord_change", args=[record.pk])
    response = client.get(url)
    assert response.status_code == 200
    return response.text


@pytest.mark.urls("tests.test_admin")
class TestAdmin:
    SECRET = '{"card": "4242-secret"}'

    @pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
    def test_viewing_records_does_not_show_stored_responses(self, keys, encrypted) -> None:
        if encrypted:
            keys(NEW)
        record = completed({"X-Secret": "header-secret"}, self.SECRET.encode())
        text = change_page(admin_client("view_idempotencyrecord"), record)
        assert "4242-secret" not in text
        assert "header-secret" not in text
        assert "Can view stored response" in text
        assert "bytes" in text  # the size is metadata, still shown

    @pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
    @pytest.mark.parametrize("superuser", [False, True], ids=["permission", "superuser"])
    def test_the_permission_shows_them_decrypted(self, keys, encrypted, superuser) -> None:
        if encrypted:
            keys(NEW)
        record = completed({"X-Secret": "header-secret"}, self.SECRET.encode())
        perms = () if superuser else ("view_idempotencyrecord", "view_stored_response")
        text = change_page(admin_client(*perms, superuser=superuser), record)
        assert "4242-secret" in text
        assert "header-secret" in text

    def test_a_record_no_key_opens_says_so(self, keys) -> None:
        keys(OLD)
        record = completed({"X-Secret": "header-secret"}, self.SECRET.encode())
        keys(NEW)
        text = change_page(admin_client(superuser=True), record)
        assert str(CANNOT_DECRYPT).split(":")[0] in text.replace("&#x27;", "'")
        assert "4242-secret" not in text

    def test_the_permission_exists(self) -> None:
        permission = Permission.objects.get(codename="view_stored_response")
        assert permission.content_type.model_class() is IdempotencyRecord
        assert permission.name == "Can view stored response"


def test_every_reencrypt_option_is_documented() -> None:
    from django.core.management.base import BaseCommand

    own = command.Command().create_parser("manage.py", "reencrypt_idempotency_records")
    standard = {
        option
        for action in BaseCommand().create_parser("manage.py", "base")._actions
        for option in action.option_strings
    }
    options = {
        option
        for action in own._actions
        for option in action.option_strings
        if option not in standard and option.startswith("--")
    }
    assert options == {"--dry-run", "--batch-size", "--database"}
    page = (PACKAGE.parent / "docs" / "reference" / "management-command.md").read_text()
    section = page.split("## reencrypt_idempotency_records", 1)[1]
    assert [option for option in sorted(options) if f"`{option}" not in section] == []
