"""The PostgreSQL core both tools share: connecting, transaction-local limits, password scrubbing, lock retries."""
