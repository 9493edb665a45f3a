"""A minimal Django project served by gunicorn for the chaos suite and the overhead benchmark.

Run from ``benchmarks/`` (``python benchmarks/chaos.py`` and ``benchmarks/overhead.py``
put it on ``sys.path`` and start gunicorn with ``--chdir benchmarks``).
"""
