"""The manifest each registry entry carries (llmos-manifest.json) and reading entries back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmos.errors import ModelFormatError
from llmos.io.config import read_json

MANIFEST = "llmos-manifest.json"


MANIFEST_FORMAT = "llmos-manifest"


MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """A model in the registry (or a plain folder described the same way, with name None)."""

    name: str | None
    tag: str | None
    path: str
    manifest: dict = field(repr=False)

    @property
    def ref(self) -> str:
        """``name:tag``, or the folder path for a model outside the registry."""
        return f"{self.name}:{self.tag}" if self.name is not None else self.path

    @property
    def digest(self) -> str | None:
        return self.manifest.get("digest")

    @property
    def size(self) -> int:
        return int(self.manifest.get("size") or 0)

    @property
    def family(self) -> str | None:
        return self.manifest.get("family")

    @property
    def format(self) -> str | None:
        return self.manifest.get("model_format")

    @property
    def dtype(self) -> str | None:
        return self.manifest.get("dtype")

    @property
    def quantization(self) -> dict | None:
        return self.manifest.get("quantization")

    @property
    def created(self) -> str | None:
        return self.manifest.get("created")

    @property
    def source(self) -> dict:
        return self.manifest.get("source") or {}

    @property
    def lineage(self) -> list[dict]:
        return list(self.manifest.get("lineage") or [])

    @property
    def chat_template(self) -> str | None:
        return self.manifest.get("chat_template")

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.manifest.get("eos_token_ids") or [])

    @property
    def files(self) -> dict[str, dict]:
        return dict(self.manifest.get("files") or {})


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    data = read_json(str(path))
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        raise ModelFormatError(f"{path}: not an llmos manifest (expected format '{MANIFEST_FORMAT}' and a "
                               "'files' object)", file=str(path))
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFormatError(f"{path}: field 'version': expected an integer, got {version!r}", file=str(path),
                               field="version")
    if version > MANIFEST_VERSION:
        raise ModelFormatError(f"{path}: manifest version {data.get('version')} is newer than this llmos "
                               f"understands ({MANIFEST_VERSION}); upgrade llmos", file=str(path), field="version")
    return data
