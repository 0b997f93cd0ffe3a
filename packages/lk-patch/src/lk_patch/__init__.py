"""Architecture registry and source patching (in progress: see the lk-patch issue)."""

__all__: list[str] = []
