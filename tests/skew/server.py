"""One app server of the clock-skew test: ``python -m tests.skew.server PORT``.

Django's threaded WSGI server (runserver's) on ``tests.skew.settings``, started directly or
under ``faketime``. SIGTERM stops it like Ctrl-C, so a measured run saves its coverage.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    select.select([], [], [], float(seconds))


def main() -> None:
    if os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1":
        # libfaketime 0.9.10 makes time.sleep's clock_nanosleep(TIMER_ABSTIME) fail with
        # EINVAL when the monotonic clock is left alone; select's timeout is not touched.
        time.sleep = _sleep
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.skew.settings")
    import django

    django.setup()
    from django.core.servers.basehttp import run
    from django.core.wsgi import get_wsgi_application

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run("127.0.0.1", int(sys.argv[1]), get_wsgi_application(), threading=True)


if __name__ == "__main__":
    main()
