"""The real-image corpus: sources, fixed split, manifest and the `prepare` command."""
