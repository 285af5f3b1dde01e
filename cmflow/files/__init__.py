"""Data movement beside the transport: declared inputs staged into a work directory per
job on its host, outputs fetched back verified, a content-addressed cache per host.

spec.py    command(), @task(inputs=, outputs=) resolved at compile time (JobFiles)
value.py   Files, the value of a job with outputs
mover.py   stage, run in the work dir, fetch, verify, clean up: local and shell (ssh) hosts
"""
