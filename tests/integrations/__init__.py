"""Tests of the embedding API and the integration examples, each against a real PostgreSQL."""
