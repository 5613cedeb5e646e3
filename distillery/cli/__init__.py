"""The click command line: `distillery.cli.main:main` is the entry point."""
