"""Names fixed by the API: group, version, kinds, and what lives under ``speechkit.dev/``."""

GROUP = "speechkit.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

JOB_KIND = "TranscriptionJob"
JOB_PLURAL = "transcriptionjobs"

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
