"""The slow end-to-end tier: real kube-apiserver, kube-controller-manager, etcd, MinIO and Helm.

The binaries are built from their Go modules by `.ci/build-components` at the versions pinned in
`devstack/versions.env`; `devstack/components.py` finds and starts them.
"""
