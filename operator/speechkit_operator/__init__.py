"""speechkit-operator: a Kubernetes operator that transcribes speech stored in S3 with Yandex SpeechKit."""

__version__ = "0.1.0"
