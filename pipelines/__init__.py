"""distillery orchestration: readers, preprocessing, dataset store, versions, data cards, CLI."""
