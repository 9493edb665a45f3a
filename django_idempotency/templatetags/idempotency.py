"""``{% idempotency_key_field %}``: a fresh key per rendered form, against double submits.

Humans click "Pay" twice, and browsers resend a form on reload. The field puts a new
UUID4 key in the form each time the page is rendered; every submit of *that* page
sends the same key, so ``@idempotent`` runs the first and hands the others its answer
(typically its redirect) instead of placing a second order::

    {% load idempotency %}
    <form method="post">{% csrf_token %}{% idempotency_key_field %} ... </form>

The field's name is ``IDEMPOTENCY["FORM_FIELD"]`` (default ``idempotency_key``); the
guard reads it when the request carries no ``Idempotency-Key`` header.
"""

from __future__ import annotations

import uuid

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from django_idempotency.conf import conf

register = template.Library()


@register.simple_tag
def idempotency_key_field() -> SafeString:
    """``<input type="hidden" name="idempotency_key" value="<uuid4>">``."""
    return format_html(
        '<input type="hidden" name="{}" value="{}">', conf.FORM_FIELD, str(uuid.uuid4())
    )
