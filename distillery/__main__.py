"""`python -m distillery` runs the distillery command line."""
from distillery.cli.main import main

main()
