"""Durable state: the SQL schema and its Alembic migrations, the engine, the spool of files, UID
checks, and the rows of jobs, deliveries and reports. Imports only `errors` and
`structured_reports`; it records no audit events itself (callers write state and audit in one
transaction)."""
