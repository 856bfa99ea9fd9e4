"""`python -m portrait_core`: the command line."""
