"""Serving a state directory over HTTP: the JSON API (``/api/v1/``), ``/metrics`` and health.

``reconciler serve`` serves a read-only view without reconciling; ``reconciler run --listen``
serves from the loop's process, on a thread beside its passes. The parts, each by its name:

- ``listen``: where it listens and with what token and TLS, checked before anything is served
  (no web stack imported);
- ``views``: the one status computation the endpoints share, and what the loop says of its
  passes;
- ``app``: the route table, access rules and the one redacting chokepoint of every answer;
- ``metrics``: the Prometheus collector, computed per scrape;
- ``server``: uvicorn on its thread.

Read-only towards the state: it opens read-only connections only and asks the loop for a pass
through the loop's own wake-up. Only the commands that serve import it.
"""
