"""``make bench``: the table of measured figures (design §8), each a ratio or a count.

One module per section of the table (``plan_scale``, ``slots``, ``refill``, ``push``,
``reaction``, ``github``, ``transports``, ``pool``, ``meter``), the helpers they share
(``table``, ``sandbox``, ``manifests``, ``runs``, ``spawns``, ``drive``) and the runner
(``python -m bench``). The bench measures through the reconciler's public interfaces: the
engine, the lanes, the node's operations and its command line.
"""
