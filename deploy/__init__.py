"""Deployment manifests generated from code."""
