"""Parent side of the walredo fork server, and the template machinery.

The public API is re-exported here; each name lives in the module named for what it does.
"""

from walredo_template import BufferTag

__all__ = ["BufferTag"]

from .errors import CellClosed, ForkServerError, InitAborted
from .oncecell import OnceCell

__all__ += ["CellClosed", "ForkServerError", "InitAborted", "OnceCell"]

from .errors import ProcessBroken, ProcessClosed, RedoFailed
from .process import ProcessState, ProcessStats, WalRedoProcess

__all__ += ["ProcessBroken", "ProcessClosed", "ProcessState", "ProcessStats", "RedoFailed", "WalRedoProcess"]

from .client import ChildHandle, TemplateClient
from .errors import InvalidTenantId, ProtocolError, SpawnRefused, TemplateError, TemplateUnavailable

__all__ += ["ChildHandle", "InvalidTenantId", "ProtocolError", "SpawnRefused", "TemplateClient", "TemplateError",
            "TemplateUnavailable"]

from .errors import ManagerClosed, RedoProcessFailed, RedoTimeout, UsageError
from .manager import ProcessInfo, WalRedoManager

__all__ += ["ManagerClosed", "ProcessInfo", "RedoProcessFailed", "RedoTimeout", "UsageError", "WalRedoManager"]
