"""Names fixed by the API: group, version, kinds, and what lives under ``speechkit.dev/``."""

GROUP = "speechkit.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

JOB_KIND = "TranscriptionJob"
JOB_PLURAL = "transcriptionjobs"

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP

#: Where version 0.1.0 kept a copy of the operation id. Nothing reads it any more: a job copied
#: from an old one carries it along, and must not adopt the other job's operation.
LEGACY_OPERATION_ANNOTATION = f"{GROUP}/operation-id"
