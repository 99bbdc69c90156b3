"""Stored responses for /v1/responses: the store (SQLite or PostgreSQL), the service the front doors share
(create with `store` / `previous_response_id` / `background`, retrieve, input items, delete, cancel, resumable
event streams), and the conversion of a stored conversation into chat messages. Modules: config (the `responses:`
section), store, service, runs (background runs), chain (stored items -> messages)."""
