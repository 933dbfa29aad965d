"""PostgreSQL 15 WAL: record decoding, image restore, heap redo, masking, WAL reading."""
