"""Scopes written by ``scopes.by_user_or_session`` before this migration held the guest's
raw session key (``session:<key>``): a live credential, shown in the admin and sent with signals.
This rewrites them to the hashed form the scope function computes now
(``session:h1:<HMAC-SHA256>``), so a guest's retry still finds its operation.

Only rows whose scope starts with ``session:`` but not ``session:h1:`` are touched (a
raw session key never holds a colon), so running it again changes nothing. A row whose
hashed twin already exists (the guest retried under the new version before this ran)
can never be found again and still names the session: it is deleted instead.

The hash is spelled out here rather than imported, so this migration keeps computing
version h1 whatever the scope function becomes.
"""

from __future__ import annotations

from django.db import migrations, router
from django.utils.crypto import salted_hmac

RAW_PREFIX = "session:"
HASHED_PREFIX = "session:h1:"
SALT = "django_idempotency.scopes.by_user_or_session"
BATCH = 500


def hashed(scope):
    session_key = scope[len(RAW_PREFIX) :]
    return HASHED_PREFIX + salted_hmac(SALT, session_key, algorithm="sha256").hexdigest()


def hash_session_scopes(apps, schema_editor):
    record_model = apps.get_model("django_idempotency", "IdempotencyRecord")
    alias = schema_editor.connection.alias
    if not router.allow_migrate_model(alias, record_model):
        return
    records = record_model.objects.using(alias)
    raw = records.filter(scope__startswith=RAW_PREFIX).exclude(scope__startswith=HASHED_PREFIX)
    while True:
        batch = list(raw.values_list("pk", "scope", "key")[:BATCH])
        if not batch:
            return
        new_scope = {pk: hashed(scope) for pk, scope, _key in batch}
        taken = set(
            records.filter(
                scope__in=set(new_scope.values()), key__in={key for _pk, _scope, key in batch}
            ).values_list("scope", "key")
        )
        twins = [pk for pk, _scope, key in batch if (new_scope[pk], key) in taken]
        rewritten = [
            record_model(pk=pk, scope=new_scope[pk])
            for pk, _scope, key in batch
            if (new_scope[pk], key) not in taken
        ]
        if twins:
            records.filter(pk__in=twins).delete()
        records.bulk_update(rewritten, ["scope"])


class Migration(migrations.Migration):
    dependencies = [("django_idempotency", "0001_initial")]

    operations = [
        migrations.RunPython(hash_session_scopes, migrations.RunPython.noop, elidable=True),
    ]
