"""`python -m pipelines` runs the distillery CLI."""
from pipelines.cli import main

main()
