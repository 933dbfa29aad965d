"""Parent side of the walredo fork server, and the template machinery.

The public API is re-exported here; each name lives in the module named for what it does. The exports
are resolved lazily (PEP 562): the template process imports ``forkserver.template`` and must not drag in
asyncio, prometheus_client and the manager, which would add ~8 MiB to the template and to every fork.
A type checker does not run ``__getattr__``: the ``TYPE_CHECKING`` imports below give it every public name
with its real type (they are never executed, so the template still imports nothing it does not need).
"""

import importlib
from typing import TYPE_CHECKING

from walredo_template import BufferTag

if TYPE_CHECKING:
    # Listed in __all__, so these are explicit re-exports (mypy --strict allows no implicit ones).
    from .client import ChildHandle, TemplateClient
    from .errors import (
        CellClosed,
        ControlProtocolError,
        ForkServerError,
        InitAborted,
        InvalidTenantId,
        ManagerClosed,
        ProcessBroken,
        ProcessClosed,
        ProtocolError,
        RedoFailed,
        RedoProcessFailed,
        RedoTemplateUnavailable,
        RedoTimeout,
        SpawnRefused,
        SpawnTimeout,
        TemplateError,
        TemplateUnavailable,
        UsageError,
    )
    from .manager import ManagerStatistics, ProcessInfo, WalRedoManager
    from .oncecell import OnceCell
    from .process import ProcessState, ProcessStats, WalRedoProcess
    from .status import ManagerStatus, TemplateStatus, TenantStatus

_EXPORTS = {
    # once-cell
    "OnceCell": "oncecell",
    # errors
    "CellClosed": "errors",
    "ControlProtocolError": "errors",
    "ForkServerError": "errors",
    "InitAborted": "errors",
    "InvalidTenantId": "errors",
    "ManagerClosed": "errors",
    "ProcessBroken": "errors",
    "ProcessClosed": "errors",
    "ProtocolError": "errors",  # the old name of ControlProtocolError (public API, kept)
    "RedoFailed": "errors",
    "RedoProcessFailed": "errors",
    "RedoTemplateUnavailable": "errors",
    "RedoTimeout": "errors",
    "SpawnRefused": "errors",
    "SpawnTimeout": "errors",
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
    "ManagerStatistics": "manager",
    "ProcessInfo": "manager",
    "WalRedoManager": "manager",
    # status
    "ManagerStatus": "status",
    "TemplateStatus": "status",
    "TenantStatus": "status",
}

# A literal list, so that type checkers and linters read it (it is BufferTag plus every key of _EXPORTS).
__all__ = [
    "BufferTag",
    "CellClosed",
    "ChildHandle",
    "ControlProtocolError",
    "ForkServerError",
    "InitAborted",
    "InvalidTenantId",
    "ManagerClosed",
    "ManagerStatistics",
    "ManagerStatus",
    "OnceCell",
    "ProcessBroken",
    "ProcessClosed",
    "ProcessInfo",
    "ProcessState",
    "ProcessStats",
    "ProtocolError",
    "RedoFailed",
    "RedoProcessFailed",
    "RedoTemplateUnavailable",
    "RedoTimeout",
    "SpawnRefused",
    "SpawnTimeout",
    "TemplateClient",
    "TemplateError",
    "TemplateStatus",
    "TemplateUnavailable",
    "TenantStatus",
    "UsageError",
    "WalRedoManager",
    "WalRedoProcess",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkserver' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
