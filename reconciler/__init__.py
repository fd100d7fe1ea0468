"""reconciler: a declarative GitOps reconciler that dispatches coding agents.

The pass flows one way: ``manifests`` (desired) → ``observe`` (the world, through ``lanes``) →
``plan`` (pure) → ``apply`` (through ``lanes``) → ``state`` (records and events).
"""

__version__ = "0.1.0"
