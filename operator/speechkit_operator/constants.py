"""Names fixed by the API: group, version, kinds, and what lives under ``speechkit.dev/``."""

GROUP = "speechkit.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

JOB_KIND = "TranscriptionJob"
JOB_PLURAL = "transcriptionjobs"

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP

#: The operation id, also kept in an annotation: kopf writes metadata before status, so if the
#: operator dies between the two writes, the id survives here and the status is restored from it.
OPERATION_ANNOTATION = f"{GROUP}/operation-id"
