from devstack.components import free_port

__all__ = ["free_port"]
