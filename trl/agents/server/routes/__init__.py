"""The gateway's HTTP routes, one `APIRouter` per family; each route only reads its request and calls the `Gateway`.

* `recorded.py`: the agent's OpenAI API under `/sessions/{sid}/v1/` (every turn recorded).
* `sessions.py`: the trainer reads and frees recorded sessions (control plane, bearer token).
* `weights.py`: the trainer's weight sync (control plane, bearer token).
* `health.py`: `/health` and `/metrics`.
* `unrecorded.py`: `/v1/...`, forwarded to the least busy replica without recording.
* `deps.py`: what routes share: the `Gateway` of the app, the token check, reading a JSON body.

Not here: the work (`gateway.py: Gateway`), error responses (`errors.py`), body models (`protocol.py`).
"""

from __future__ import annotations

from . import health, recorded, sessions, unrecorded, weights


# In the order they are mounted (which is also their order in the OpenAPI schema).
ROUTERS = [recorded.router, sessions.router, weights.router, health.router, unrecorded.router]
