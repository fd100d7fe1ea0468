"""The embedded default: a sandbox under ``.demo/`` and a scripted agent that plays a real one."""
