"""One module per job-log schema revision, oldest first (``0001_baseline`` is schema v1)."""
