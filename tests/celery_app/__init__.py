"""A Celery app for the worker tests: ``celery -A tests.celery_app.app worker``."""
