"""Events about files, kept in an outbox and delivered as signed webhooks.

- ``types``: the event types.
- ``metadata``: the caller's own JSON object given at upload (bounded), echoed in events.
- ``payload``: what an event says (the file's metadata as the API shows it) and its JSON body.
- ``endpoints``: the webhook endpoints (``MEDIASVC_WEBHOOKS``).
- ``send``: one signed POST (Standard Webhooks), no redirects, a timeout.
- ``deliver``: the job that delivers an event to every endpoint that wants it.

Writing an event is ``db.outbox.record`` (or ``record_file``) inside the transaction of the
change it reports; nothing else is needed: the job is enqueued once that transaction commits.
"""
