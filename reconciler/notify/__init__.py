"""Notifications out: ``reconciler run`` tells the Config's sinks (a JSON webhook, a
Slack-compatible webhook, a command) of task transitions and control repository problems.

``transitions`` decides what changed (pure), ``document`` is what a sink receives (pure, with its
JSON Schema), ``sinks`` delivers one try, ``notifier`` tracks what was notified in the state and
delivers from worker threads. docs/notifications.md is the user's side.

Must not import ``reconciler.apply``, ``engine``, ``web``, ``lanes`` or ``node``: the daemon hands
it what a pass computed.
"""

from reconciler.notify.document import NotificationDocument, schema_documents
from reconciler.notify.notifier import Notifier

__all__ = ["NotificationDocument", "Notifier", "schema_documents"]
