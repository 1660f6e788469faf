"""Benchmarks: scripts run by hand (``.venv/bin/python -m bench.<name>``), each writing its
figures to ``bench/results/<name>.json``. See bench/README.md."""
