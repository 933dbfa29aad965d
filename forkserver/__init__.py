"""Parent side of the walredo fork server, and the template machinery.

The public API is re-exported here; each name lives in the module named for what it does. The exports
are resolved lazily (PEP 562): the template process imports ``forkserver.template`` and must not drag in
asyncio, prometheus_client and the manager, which would add ~8 MiB to the template and to every fork.
"""

import importlib

from walredo_template import BufferTag

_EXPORTS = {
    # once-cell
    "OnceCell": "oncecell",
    # errors
    "CellClosed": "errors",
    "ForkServerError": "errors",
    "InitAborted": "errors",
    "InvalidTenantId": "errors",
    "ManagerClosed": "errors",
    "ProcessBroken": "errors",
    "ProcessClosed": "errors",
    "ProtocolError": "errors",
    "RedoFailed": "errors",
    "RedoProcessFailed": "errors",
    "RedoTimeout": "errors",
    "SpawnRefused": "errors",
    "TemplateError": "errors",
    "TemplateUnavailable": "errors",
    "UsageError": "errors",
    # one child connection
    "ProcessState": "process",
    "ProcessStats": "process",
    "WalRedoProcess": "process",
    # template client
    "ChildHandle": "client",
    "TemplateClient": "client",
    # manager
    "ProcessInfo": "manager",
    "WalRedoManager": "manager",
}

__all__ = ["BufferTag", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkserver' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
