-- Hash indexes (Hash records): built on empty tables and filled by inserts (INIT_META_PAGE, INIT_BITMAP_PAGE,
-- INSERT, bucket splits: SPLIT_ALLOCATE_PAGE with metapage mask/splitpoint updates, SPLIT_PAGE, SPLIT_COMPLETE),
-- overflow chains from skewed keys (ADD_OVFL_PAGE), deletes + VACUUM (DELETE, SPLIT_CLEANUP, squeeze:
-- MOVE_PAGE_CONTENTS, SQUEEZE_PAGE, UPDATE_META_PAGE), reuse of freed overflow pages (ADD_OVFL_PAGE with the
-- bitmap bit set), and inserts into full pages whose items index scans killed (VACUUM_ONE_PAGE).
CREATE TABLE hash_int (id int, k int);
CREATE INDEX hash_int_k ON hash_int USING hash (k);
CREATE TABLE hash_text (id int, t text);
CREATE INDEX hash_text_t ON hash_text USING hash (t);

-- Unique keys grow the int index from 2 buckets through several splitpoints; five heavy keys make overflow
-- chains, and a split that moves a heavy key fills the new bucket's page (SPLIT_PAGE).
INSERT INTO hash_int SELECT g, g FROM generate_series(1, 2500) g;
INSERT INTO hash_int SELECT 10000 + g, g % 5 FROM generate_series(1, 2500) g;
INSERT INTO hash_text SELECT g, 'v' || (g % 7) FROM generate_series(1, 1500) g;
INSERT INTO hash_text SELECT g, md5(g::text) FROM generate_series(1, 1000) g;

-- Deletes + VACUUM: DELETE per page, SPLIT_CLEANUP of the split buckets, squeeze of the heavy buckets'
-- chains (MOVE_PAGE_CONTENTS, SQUEEZE_PAGE), UPDATE_META_PAGE at the end.
DELETE FROM hash_int WHERE id % 3 <> 0 AND id > 10000;
DELETE FROM hash_int WHERE id % 4 = 0 AND id <= 10000;
DELETE FROM hash_text WHERE id % 5 <> 0;
VACUUM hash_int;
VACUUM hash_text;

-- Freed overflow pages are reused (ADD_OVFL_PAGE finding a free bit in the bitmap page).
INSERT INTO hash_int SELECT 20000 + g, g % 5 FROM generate_series(1, 1200) g;

-- One key's chain (primary page + 3 overflow pages) with rows deleted from the 1st and 3rd overflow pages only,
-- their items killed by a plain index scan first: VACUUM's DELETE runs on overflow pages (with the primary
-- bucket page as a cleanup-lock-only block) and clears LH_PAGE_HAS_DEAD_TUPLES, and the squeeze writes to
-- an overflow page, not the full primary page (SQUEEZE_PAGE / MOVE_PAGE_CONTENTS with block 0 and 3).
CREATE TABLE hash_chain (id int, k int);
CREATE INDEX hash_chain_k ON hash_chain USING hash (k);
INSERT INTO hash_chain SELECT g, 7 FROM generate_series(1, 1600) g;
DELETE FROM hash_chain WHERE id BETWEEN 420 AND 700 OR id BETWEEN 1300 AND 1500;
SET enable_bitmapscan = off;
SET enable_seqscan = off;
SELECT count(*) FROM hash_chain WHERE k = 7;
RESET enable_bitmapscan;
RESET enable_seqscan;
VACUUM hash_chain;

-- Killed items: a plain index scan after the delete marks the dead rows' items LP_DEAD (no WAL); inserting
-- into that full page then removes them first (VACUUM_ONE_PAGE).
CREATE TABLE hash_kill (id int, k int);
CREATE INDEX hash_kill_k ON hash_kill USING hash (k);
INSERT INTO hash_kill SELECT g, 1 FROM generate_series(1, 700) g;
DELETE FROM hash_kill WHERE id <= 300;
SET enable_bitmapscan = off;
SET enable_seqscan = off;
SELECT count(*) FROM hash_kill WHERE k = 1;
INSERT INTO hash_kill SELECT 1000 + g, 1 FROM generate_series(1, 200) g;
RESET enable_bitmapscan;
RESET enable_seqscan;
