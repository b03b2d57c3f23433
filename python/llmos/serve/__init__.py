"""`llmos serve`: an OpenAI-compatible HTTP server over llmos engines (FastAPI + uvicorn).

app.py (routes, admission, API keys, body cap), protocol.py (request bodies), completions.py
and chat.py (the two generation routes), tools.py (tool calls parsed from replies),
streaming.py (SSE, disconnects), models.py (lazy loading, idle unload), metrics.py
(Prometheus), run.py (binding and draining). Needs the `serve` extra."""
