"""distillery's application layer: the `distillery` command line, the demo and the recipes.

It may import every layer below it (``pipelines``: the foundation and preprocessing; ``augment``; ``distill``);
nothing below imports it (see docs/ARCHITECTURE.md).
"""
