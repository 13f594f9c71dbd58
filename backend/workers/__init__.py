"""The fleet: workers register themselves and beat; the API lists them (GET /workers)."""
