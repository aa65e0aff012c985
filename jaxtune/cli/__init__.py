"""The `jaxtune` command: train, eval, export, generate (and label, once it exists)."""
