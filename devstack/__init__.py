"""A local stack of real components for the e2e tests and the demo.

``components`` finds the binaries built by ``.ci/build-components`` (pinned in ``versions.env``) and
starts etcd, kube-apiserver, kube-controller-manager and MinIO on loopback; ``demo`` runs the whole
product on them.
"""
