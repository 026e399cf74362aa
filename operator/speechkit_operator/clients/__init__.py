"""Small I/O clients: speech recognition APIs, object storage and Kubernetes Secrets."""
