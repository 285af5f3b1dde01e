"""Multi-service data access: bytes in storage services, one record per file in a database.

    service = DataService.from_config(load_config(None))
    service.add(Path("results.csv"))
"""
from .config import DataConfig, load_config
from .record import Record
from .service import DataError, DataService

__all__ = ["DataConfig", "DataError", "DataService", "Record", "load_config"]
