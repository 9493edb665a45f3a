"""``view_stored_response``: the permission to see a stored response's headers and body in
the admin. They hold what a client was answered, so viewing records no longer shows them.

Only Meta options change: no SQL runs (Django creates the permission after migrating).
"""

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("django_idempotency", "0003_liveness"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="idempotencyrecord",
            options={
                "ordering": ["-created_at"],
                "permissions": [("view_stored_response", "Can view stored response")],
                "verbose_name": "idempotency record",
                "verbose_name_plural": "idempotency records",
            },
        ),
    ]
