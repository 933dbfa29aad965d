-- Generic WAL (rmgr 20, Generic/Generic), written by contrib's bloom index.
--
-- bloom_t: the index is built on the empty table (the metapage alone, a full-image record), then filled by
-- inserts: each insert is a delta of its page, a new page is a full image next to a delta of the metapage
-- (two blocks). Deletes + VACUUM: bloom's bulkdelete rewrites pages as deltas (pages left empty are marked
-- deleted) and updates the metapage's list of not-full pages; the next inserts reuse those pages.
-- After a CHECKPOINT the first delta of each page comes with a full-page image, which redo restores instead.
-- bloom_full: an index built on a full table (every page a full image, built in memory).
CREATE EXTENSION IF NOT EXISTS bloom;

CREATE TABLE bloom_t (a int4, b int4, c text) WITH (autovacuum_enabled = off);
CREATE INDEX bloom_t_idx ON bloom_t USING bloom (a, b, c) WITH (length = 80, col1 = 2, col2 = 2, col3 = 4);
INSERT INTO bloom_t SELECT g, g % 97, 'v' || (g % 13) FROM generate_series(1, 3000) g;
DELETE FROM bloom_t WHERE a % 3 = 0 OR a BETWEEN 1000 AND 1600;
VACUUM bloom_t;
INSERT INTO bloom_t SELECT g, g % 89, 'w' || (g % 7) FROM generate_series(3001, 4200) g;
DELETE FROM bloom_t WHERE a > 3500;
VACUUM bloom_t;
CHECKPOINT;  -- the next change of each page carries a full-page write: an image to apply beside the delta
INSERT INTO bloom_t SELECT g, g % 5, 'x' FROM generate_series(5001, 5300) g;

CREATE TABLE bloom_full (a int4, b int4) WITH (autovacuum_enabled = off);
INSERT INTO bloom_full SELECT g, g * 7 FROM generate_series(1, 2000) g;
CREATE INDEX bloom_full_idx ON bloom_full USING bloom (a, b);
INSERT INTO bloom_full SELECT g, g * 7 FROM generate_series(2001, 2100) g;
