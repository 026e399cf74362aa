"""Where and as whom the operator reaches S3-compatible object storage: a value the logic builds from
a storage Secret and :class:`~speechkit_operator.clients.storage.StorageFactory` turns into a client."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The keys of a storage Secret.
ACCESS_KEY_ID = "access-key-id"
SECRET_ACCESS_KEY = "secret-access-key"
ENDPOINT = "endpoint"
REGION = "region"


@dataclass(frozen=True)
class StorageConfig:
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
