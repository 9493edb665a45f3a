"""Create the sample shop's demo superuser (once) and print how to log in."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

USERNAME = "demo"
PASSWORD = "demo"


class Command(BaseCommand):
    help = "Create the demo superuser and its API token if missing; print the credentials."

    def handle(self, *args: Any, **options: Any) -> None:
        user, created = get_user_model().objects.get_or_create(
            username=USERNAME, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(PASSWORD)
            user.save(update_fields=["password"])
        token, _ = Token.objects.get_or_create(user=user)
        state = "Created" if created else "Existing"
        self.stdout.write(
            f"{state} demo superuser: username {USERNAME!r}, password {PASSWORD!r}"
            + ("" if created else " (unless you changed it)")
            + f"\nAPI token: {token.key}"
        )
