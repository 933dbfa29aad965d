-- B-tree (RM_BTREE_ID 11): splits and new roots, deduplication and posting-list splits, unique / multi-column /
-- INCLUDE indexes, killed items and simple deletion, bottom-up deletion, VACUUM of whole pages (half-dead,
-- unlink, page reuse), metapage cleanup info, an index built on a full table (FPIs), REINDEX.

-- Wide text keys (~200 bytes) so that a few thousand rows make a 3-level tree: leaf and internal splits,
-- NEWROOT, INSERT_UPPER, INSERT_META (the fast root moves).
CREATE TABLE btree_wide (id int, k text);
CREATE INDEX btree_wide_k ON btree_wide (k);
INSERT INTO btree_wide SELECT g, lpad(md5(g::text), 200, 'x') FROM generate_series(1, 2000) g;
-- descending and ascending runs: rightmost and leftmost split points
INSERT INTO btree_wide SELECT g, lpad((100000 - g)::text, 200, '0') FROM generate_series(1, 300) g;
INSERT INTO btree_wide SELECT g, lpad(g::text, 200, 'z') FROM generate_series(1, 300) g;
-- a key range covering whole internal pages' subtrees: VACUUM deletes internal pages too (UNLINK_PAGE
-- with the leaf as block 3)
DELETE FROM btree_wide WHERE substr(k, 169, 1) < 'c' AND k LIKE 'x%';
VACUUM btree_wide;

-- Low cardinality: deduplication, posting lists, posting-list splits (new heap TIDs inside a posting list's
-- range: rows deleted and vacuumed so that their heap slots are reused by later inserts).
CREATE TABLE btree_dup (a int, b int, pad text) WITH (fillfactor = 100);
CREATE INDEX btree_dup_a ON btree_dup (a);
CREATE INDEX btree_dup_ab ON btree_dup (a, b) INCLUDE (pad);
INSERT INTO btree_dup SELECT g % 7, g % 3, 'p' || (g % 5) FROM generate_series(1, 2400) g;
DELETE FROM btree_dup WHERE (ctid::text::point)[1]::int % 3 = 0;
VACUUM btree_dup;
INSERT INTO btree_dup SELECT g % 7, g % 3, 'p' || (g % 5) FROM generate_series(1, 900) g;
INSERT INTO btree_dup SELECT 3, g, 'q' FROM generate_series(1, 600) g;

-- Posting-list splits during page splits: the index is built after VACUUM freed every other heap slot, so
-- its pages are full of posting lists whose TID ranges cover the free slots that later inserts take.
CREATE TABLE btree_post (a int, b int) WITH (fillfactor = 100, autovacuum_enabled = off);
INSERT INTO btree_post SELECT g % 3, g FROM generate_series(1, 4000) g;
DELETE FROM btree_post WHERE b % 2 = 0;
VACUUM btree_post;
CREATE INDEX btree_post_a ON btree_post (a);
INSERT INTO btree_post SELECT g % 3, g FROM generate_series(1, 2000) g;

-- Unique index: _bt_check_unique, killed items while checking; non-HOT updates (bottom-up deletion).
CREATE TABLE btree_uniq (id int PRIMARY KEY, v int, w text);
CREATE INDEX btree_uniq_v ON btree_uniq (v);
INSERT INTO btree_uniq SELECT g, g % 50, 'w' FROM generate_series(1, 1200) g;
UPDATE btree_uniq SET v = v + 1 WHERE id <= 600;
UPDATE btree_uniq SET v = v + 1 WHERE id <= 600;
UPDATE btree_uniq SET v = v + 1 WHERE id <= 600;
UPDATE btree_uniq SET v = v + 1, id = id WHERE id % 2 = 0;

-- Index scans after deletes mark items LP_DEAD; later inserts on those pages delete them (DELETE records).
SET enable_bitmapscan = off;
SET enable_seqscan = off;
CREATE TABLE btree_kill (id int, k int);
CREATE INDEX btree_kill_k ON btree_kill (k);
INSERT INTO btree_kill SELECT g, g FROM generate_series(1, 2000) g;
DELETE FROM btree_kill WHERE k % 4 <> 0;
CHECKPOINT;  -- with checksums, the first hint-bit change of each page after it is an XLOG FPI_FOR_HINT
SELECT count(*) FROM btree_kill WHERE k BETWEEN 1 AND 2000;
SELECT count(*) FROM btree_kill WHERE k BETWEEN 1 AND 2000;
INSERT INTO btree_kill SELECT g, g FROM generate_series(1, 2000) g WHERE g % 4 = 1;
RESET enable_bitmapscan;
RESET enable_seqscan;

-- Deletes that empty whole leaf pages, then VACUUM: MARK_PAGE_HALFDEAD, UNLINK_PAGE(_META), VACUUM with
-- updated posting lists; a second VACUUM records the deleted pages' count (META_CLEANUP); later inserts
-- reuse the recycled pages (REUSE_PAGE).
CREATE TABLE btree_vac (id int, k text, d int) WITH (autovacuum_enabled = off);
CREATE INDEX btree_vac_k ON btree_vac (k);
CREATE INDEX btree_vac_d ON btree_vac (d);
INSERT INTO btree_vac SELECT g, lpad(g::text, 150, '0'), g % 10 FROM generate_series(1, 2000) g;
DELETE FROM btree_vac WHERE id BETWEEN 200 AND 1700;
DELETE FROM btree_vac WHERE id % 7 = 0;
VACUUM btree_vac;
VACUUM btree_vac;
INSERT INTO btree_vac SELECT g, lpad(g::text, 150, '1'), g % 10 FROM generate_series(1, 800) g;
DELETE FROM btree_vac;
VACUUM btree_vac;
VACUUM btree_vac;
INSERT INTO btree_vac SELECT g, lpad(g::text, 150, '2'), g % 10 FROM generate_series(1, 400) g;

-- An index built on a full table (XLOG FPIs of its pages), then inserts into it; REINDEX.
CREATE TABLE btree_built (id int, k text);
INSERT INTO btree_built SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
CREATE INDEX btree_built_k ON btree_built (k);
INSERT INTO btree_built SELECT g, md5((g + 5000)::text) FROM generate_series(1, 400) g;
REINDEX INDEX btree_built_k;
INSERT INTO btree_built SELECT g, md5((g + 9000)::text) FROM generate_series(1, 300) g;
