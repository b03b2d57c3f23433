"""Ready-made apps for the common uses: `new_app("support-bot", "helpdesk", folder)` writes
``helpdesk.app.md`` (plus ``helpdesk_tools.py`` or a ``helpdesk_docs/`` folder where the template
has one) that runs at once on the bundled model and carries tests that pass on it.

Each template is a folder here (package data): ``app.md``, and optionally ``tools.py`` and
``docs/``. ``@NAME@`` in them becomes the new app's name.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from llmos.errors import InvalidInputError

__all__ = ["TEMPLATES", "new_app"]

TEMPLATES: dict[str, str] = {
    "support-bot": "Answers customer questions from FAQ files and hands off to a person",
    "writer": "Writes a short piece on a topic in the tone and length you choose",
    "coder": "Writes a Python function for a task you describe",
    "tutor": "Writes multiple-choice exercises with answers and explanations",
    "translator": "Translates text between the languages you choose",
    "doc-qa": "Answers questions about the documents in a folder, with citations",
}

_HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_PLACEHOLDER = "@NAME@"


def new_app(template: str, name: str, directory: Path, *, force: bool = False) -> Path:
    """Writes the app ``name`` from ``template`` into ``directory`` (created if missing) and
    returns the path of its ``NAME.app.md``. Refuses, before writing anything, when one of the
    files it would write exists, unless ``force``."""
    if template not in TEMPLATES:
        close = difflib.get_close_matches(str(template), list(TEMPLATES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidInputError(f"unknown template {template!r}{hint}; the templates are: "
                                f"{', '.join(TEMPLATES)}", field="template")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"{name!r} is not an app name: lower-case letters, digits and '-', "
                                "starting with a letter or digit, at most 64 characters", field="name")
    directory = Path(directory)
    source = _HERE / template
    plan = {directory / f"{name}.app.md": source / "app.md"}
    if (source / "tools.py").is_file():
        plan[directory / f"{name}_tools.py"] = source / "tools.py"
    docs = source / "docs"
    if docs.is_dir():
        for file in sorted(docs.iterdir()):
            plan[directory / f"{name}_docs" / file.name] = file
    if not force:
        existing = [p for p in (*plan, directory / f"{name}_docs") if p.exists()]
        if existing:
            raise InvalidInputError(f"{existing[0]} already exists; choose another name or folder, or "
                                    "overwrite it with force=True (llmos app new --force)",
                                    file=str(existing[0]), field="name")
    for target, file in plan.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.read_text(encoding="utf-8").replace(_PLACEHOLDER, name),
                          encoding="utf-8")
    return directory / f"{name}.app.md"
