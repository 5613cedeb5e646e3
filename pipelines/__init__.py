"""distillery's foundation: errors, configuration, atomic I/O, confinement, fingerprints, the store, data cards,
the step runner, the parallel map. Steps (``preprocess``, ``augment``, ``distill``) build on it; nothing here
imports them."""
