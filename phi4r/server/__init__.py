"""phi4r's OpenAI-compatible HTTP server and chat page (`phi4r serve`).

    from phi4r.server.app import create_app, make_server

Modules: app (FastAPI app, shared state, uvicorn server), generation (chat/completions endpoints,
SSE), protocol (request models, refused parameters), jobs (a request in flight, admission), runner
(the engine thread), middleware (API key, body limit, request counting), errors (OpenAI's error
shape), metrics (Prometheus text), defaults (limits). Importing this package loads nothing heavy.
"""
