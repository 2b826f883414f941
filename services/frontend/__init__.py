"""The frontend: the stateless public face of the registry.

It implements `cogmentAPI.ModelRegistrySP` (and its 1.x alias
`cogment.ModelRegistrySP`), validates requests, streams version data between
clients and the blobstore while hashing it, and asks metadata to commit.
"""
