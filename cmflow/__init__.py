"""cmflow: run many shell jobs on many machines from one short expression."""
from .files.spec import command
from .files.value import Files
from .tasks import local, task

__version__ = "0.1.0"
__all__ = ["task", "local", "command", "Files", "__version__"]
