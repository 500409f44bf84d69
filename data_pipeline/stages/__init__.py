"""Per-document stages: one class per file, each with a config dataclass and a pure `process`."""
