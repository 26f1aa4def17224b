"""The PostgreSQL 11-18 version matrix: make test-matrix."""
