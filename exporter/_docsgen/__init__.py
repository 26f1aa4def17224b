"""Generates the docs site's tables from the code that defines them (`make docs`, checked fresh by a test)."""
