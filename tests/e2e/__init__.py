"""End-to-end tests: the real `switchboard` command in subprocesses, driven over HTTP, checked in the database."""
