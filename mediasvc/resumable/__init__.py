"""Resumable uploads, whatever the protocol: one engine (engine.py) whose state is a row
(repository.py) and whose bytes are an ``.upload`` file; tus (api/tus.py) is one HTTP layer on
it, and the IETF draft can be another."""
