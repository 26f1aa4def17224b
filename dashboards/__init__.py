"""Grafana dashboards, Prometheus rules and Grafana provisioning for partkey-exporter, generated from code."""
