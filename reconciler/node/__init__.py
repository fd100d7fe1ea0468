"""The lane side of the control-plane interface (``server`` serves batches of requests).

Everything here runs inside the lane, as the lane's user. This package's own import is kept free
of heavy dependencies, because the run supervisor (``supervisor``, standard library only) starts
as ``python -m reconciler.node.supervisor`` for every run and must start fast.
"""
