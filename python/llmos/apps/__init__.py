"""One-file apps on top of the runtime."""
