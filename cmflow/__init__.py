"""cmflow: run many shell jobs on many machines from one short expression."""
from .files.spec import command
from .files.value import Files
from .tasks import local, task

__version__ = "0.1.0"
__all__ = ["task", "local", "command", "Files", "run", "__version__"]


def run(flow_file: str, hosts_file: str | None = None, **kw):  # type: ignore[no-untyped-def]
    """Run a flow file as `cmflow run` does and return its Run (``.result.value``, ``.result.ok``,
    ``.run_dir``, ``.exit_status``); keywords: run_dir, jobs, timeout, retries, halt, fanout, resume...
    The whole API is cmflow.api; it is imported only here, so task modules importing cmflow stay light."""
    from .api import run as _run

    return _run(flow_file, hosts_file, **kw)
