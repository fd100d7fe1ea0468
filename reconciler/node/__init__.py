"""The lane side of the control-plane interface (``server`` serves batches of requests).

Everything here runs inside the lane, as the lane's user. This package's own import is kept free
of heavy dependencies, because the supervisors' fork server (``forkserver``, standard library
only) imports it, and every run supervisor is a fork of that server.
"""
