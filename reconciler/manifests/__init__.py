"""Manifests: the desired state as operators write it (models, loading, errors, JSON Schemas).

Pure: nothing here runs git or touches the file system; bytes arrive through a callback
(:func:`reconciler.manifests.loader.load`), supplied by :mod:`reconciler.control`.
"""
