"""``liveness``: how a running attempt shows it is alive (``models.Liveness``), and
``claimed_at``: when, on the database's clock, the attempt claimed or took over the key.

The column has a database default (``db_default``), so rows inserted by servers that
still run the previous version during a rolling deploy read as ``LEASE``: a retry waits
for their lease, exactly as those servers expect. On PostgreSQL 11+ and MariaDB 10.3+
adding a column with a constant default does not rewrite the table.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_idempotency", "0002_hash_session_scopes"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencyrecord",
            name="claimed_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="claimed at"),
        ),
        migrations.AddField(
            model_name="idempotencyrecord",
            name="liveness",
            field=models.CharField(
                blank=True,
                choices=[("", "Lease"), ("row", "Row"), ("session", "Session")],
                db_default="",
                default="",
                max_length=8,
                verbose_name="liveness",
            ),
        ),
    ]
