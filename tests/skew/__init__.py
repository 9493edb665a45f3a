"""Clock skew between app servers: tests/skew/test_clock_skew.py and the site it serves."""
