-- GIN (rmgr 13): every GIN record kind PostgreSQL 15 writes.
--
-- gin_tree: 30000 rows loaded by COPY (a few heap MULTI_INSERT records) under a partial GIN index built
-- afterwards (the build writes only XLOG FPIs): keys 1, 2 and 3 get posting trees of packed leaves under
-- internal roots. DELETE of a middle id range + VACUUM: VACUUM_DATA_LEAF_PAGE (DELETE/REPLACE actions) on
-- partly emptied leaves, DELETE_PAGE for the emptied one (deleted page, parent, left sibling). Unindexed
-- rows deleted at the start of the heap free slots there: the new rows' TIDs fall inside the full first
-- leaf (data leaf INSERT with ADDITEMS/REPLACE/INSERT actions, data leaf SPLIT, data internal INSERT
-- clearing the child's INCOMPLETE_SPLIT).
-- gin_root: one posting tree per key, each a single nearly full root leaf after the build; appends to
-- key 0 split it (data leaf root SPLIT).
-- gin_ent: 900-byte incompressible text keys (8 to a page) inserted one by one with fastupdate off:
-- entry leaf INSERT (with isDelete when a posting list grows), SPLIT of leaves, of the root and of
-- internal pages (block 3 cleared), internal INSERT; one heap page per row (fillfactor 10) makes the
-- 'common' key's posting list grow past GinMaxItemSize: CREATE_PTREE, then data leaf ADDITEMS.
-- DELETE + VACUUM: VACUUM_PAGE (entry pages whose posting lists lost items).
-- gin_fast: jsonb (jsonb_ops, jsonb_path_ops), int[] and tsvector with fastupdate on: the pending list
-- (INSERT_LISTPAGE, UPDATE_META_PAGE with tuples, with a new sublist, or merging lists), its cleanup
-- (DELETE_LISTPAGE) by gin_clean_pending_list, by gin_pending_list_limit during inserts and by VACUUM.
SET synchronous_commit = on;
SET maintenance_work_mem = '64MB';

CREATE TABLE gin_tree (id int4, flag bool GENERATED ALWAYS AS (id % 4 <> 0) STORED,
  k int4[] GENERATED ALWAYS AS (ARRAY[1, 2 + id % 2]) STORED) WITH (autovacuum_enabled = off);
COPY gin_tree (id) FROM PROGRAM 'seq 1 30000';
CREATE INDEX gin_tree_idx ON gin_tree USING gin (k) WITH (fastupdate = off) WHERE flag;
DELETE FROM gin_tree WHERE id BETWEEN 10400 AND 21500;
DELETE FROM gin_tree WHERE NOT flag AND id < 4000;
VACUUM gin_tree;
INSERT INTO gin_tree (id) SELECT 40000 + 4 * g + 1 FROM generate_series(1, 500) g;

CREATE TABLE gin_root (id int4, k int4[] GENERATED ALWAYS AS (ARRAY[id % 4]) STORED)
  WITH (autovacuum_enabled = off);
COPY gin_root (id) FROM PROGRAM 'seq 1 30000';
CREATE INDEX gin_root_idx ON gin_root USING gin (k) WITH (fastupdate = off);
INSERT INTO gin_root (id) SELECT 4 * g FROM generate_series(1, 300) g;

CREATE TABLE gin_ent (id int4, t text[], pad text) WITH (autovacuum_enabled = off, fillfactor = 10);
CREATE INDEX gin_ent_idx ON gin_ent USING gin (t) WITH (fastupdate = off);
INSERT INTO gin_ent SELECT g, ARRAY[(SELECT string_agg(md5((g % 200 * 100 + i)::text), '')
  FROM generate_series(1, 28) i), 'common', (g % 3)::text] FROM generate_series(1, 600) g;
INSERT INTO gin_ent SELECT g, ARRAY['common', 'x' || (g % 5)], repeat('p', 500) FROM generate_series(601, 1600) g;
DELETE FROM gin_ent WHERE id % 3 = 0 OR id BETWEEN 700 AND 900;
VACUUM gin_ent;

CREATE TABLE gin_fast (id int4, j jsonb, a int4[], v tsvector) WITH (autovacuum_enabled = off);
CREATE INDEX gin_fast_j ON gin_fast USING gin (j) WITH (fastupdate = on, gin_pending_list_limit = 64);
CREATE INDEX gin_fast_jp ON gin_fast USING gin (j jsonb_path_ops) WITH (fastupdate = on);
CREATE INDEX gin_fast_a ON gin_fast USING gin (a) WITH (fastupdate = on);
CREATE INDEX gin_fast_v ON gin_fast USING gin (v) WITH (fastupdate = on);
INSERT INTO gin_fast SELECT g, jsonb_build_object('k', g % 10, 'common', true, 'tag', 't' || (g % 50)),
  ARRAY[g % 10, g % 7, 100], to_tsvector('simple', 'word' || (g % 20) || ' common text')
  FROM generate_series(1, 800) g;
SELECT gin_clean_pending_list('gin_fast_jp') > 0 AS cleaned;
SELECT gin_clean_pending_list('gin_fast_a') > 0 AS cleaned;
DELETE FROM gin_fast WHERE id % 5 = 0;
VACUUM gin_fast;
INSERT INTO gin_fast SELECT g, jsonb_build_object('k', g % 3, 'n', g), ARRAY[g % 3],
  to_tsvector('simple', 'again ' || g) FROM generate_series(801, 1000) g;
VACUUM gin_fast;
