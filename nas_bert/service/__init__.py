"""`nas-bert serve` and `nas-bert worker`: the search as a service (HTTP API, job queue, live page)."""
