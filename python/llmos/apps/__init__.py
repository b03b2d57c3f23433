"""One-file apps: `NAME.app.md` (YAML front matter + a Jinja system prompt) loaded as an `App`
with `.run`, `.stream`, `.chat` and `.test`; the CLI (`llmos app ...`) and the server
(`/v1/apps`) are faces of the same object. The modules: spec (the file), inputs, prompt,
output, tools, knowledge (retrieval), app (requests), testing (an app's own tests)."""

from llmos.apps.app import App, AppEvent, AppResult
from llmos.apps.inputs import InputSpec
from llmos.apps.spec import AppSpec

__all__ = ["App", "AppEvent", "AppResult", "AppSpec", "InputSpec"]
