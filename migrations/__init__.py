"""partkey-migrate: replace the partition-key trigger (DB-003) online, per table shape and PG version."""
