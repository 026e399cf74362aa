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

BATCH_KIND = "TranscriptionBatch"
BATCH_PLURAL = "transcriptionbatches"

#: On a job: take over this SpeechKit operation instead of submitting (a batch adopting the seed
#: script's work). Only a job with no operation and no submission of its own takes it.
ADOPT_OPERATION_ANNOTATION = f"{GROUP}/adopt-operation"
#: On an adopting job: when the operation was submitted (the seed's marker file's time).
ADOPT_SUBMITTED_AT_ANNOTATION = f"{GROUP}/adopt-submitted-at"
#: On a batch's jobs: which object (a name shared by its attempts) and which attempt.
BATCH_LABEL = f"{GROUP}/batch"
OBJECT_LABEL = f"{GROUP}/object"
ATTEMPT_ANNOTATION = f"{GROUP}/attempt"
#: On a batch's jobs: the batch's uid (always a valid label value, unlike a long name).
BATCH_UID_LABEL = f"{GROUP}/batch-uid"
