-- BRIN (rmgr 17): every BRIN record kind PostgreSQL 15 writes.
--
-- brin_big: a heap of ~1400 one-row pages (fillfactor 10, ~490-byte rows) under a pages_per_range = 1
-- index. The build writes CREATE_INDEX, INSERT(+INIT) and REVMAP_EXTEND; at range 1360 the first revmap
-- page is full, so the revmap extends over block 2, a regular page, which is evacuated first (UPDATE and
-- UPDATE+INIT of every tuple on it) before REVMAP_EXTEND re-initializes it.
-- Growing text summaries (md5 text is incompressible) move tuples off full pages: UPDATE(+INIT);
-- brin_desummarize_range: DESUMMARIZE; brin_summarize_range / brin_summarize_new_values: INSERT of a
-- placeholder, then SAMEPAGE_UPDATE or UPDATE with the real summary.
-- brin_mm: minmax-multi (int4_minmax_multi_ops) next to minmax text, pages_per_range = 2.
SET synchronous_commit = on;

CREATE TABLE brin_big (id int4, k text, n int4, pad text) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO brin_big SELECT g, md5(g::text), (g * 7919) % 10007, repeat('p', 420)
  FROM generate_series(1, 1400) g;
CREATE INDEX brin_big_idx ON brin_big USING brin (id, k, n)
  WITH (pages_per_range = 1, autosummarize = off);
-- from here on the first change of each page carries a full-page image to restore (BLK_RESTORED)
CHECKPOINT;

-- summaries grow: new versions land on the same heap page (same-page heap update), widening the text range
UPDATE brin_big SET k = md5(id::text) || md5((id + 1)::text) || md5((id + 2)::text), n = n + 20000
  WHERE id % 7 = 0 AND id < 700;
UPDATE brin_big SET n = -n WHERE id % 11 = 0 AND id BETWEEN 700 AND 1000;

-- desummarize and summarize again
SELECT brin_desummarize_range('brin_big_idx', b) FROM generate_series(10, 400, 13) b;
SELECT brin_summarize_range('brin_big_idx', b) FROM generate_series(10, 200, 13) b;
-- new heap pages past the summarized ranges, summarized in one go
INSERT INTO brin_big SELECT g, md5(g::text) || md5((g * 3)::text), g, repeat('q', 420)
  FROM generate_series(1401, 1440) g;
SELECT brin_summarize_new_values('brin_big_idx');

CREATE TABLE brin_mm (id int4, v int4, t text, w int8) WITH (autovacuum_enabled = off);
CREATE INDEX brin_mm_idx ON brin_mm USING brin (v int4_minmax_multi_ops, t text_minmax_ops, w)
  WITH (pages_per_range = 2, autosummarize = off);
INSERT INTO brin_mm SELECT g, (g * 2654435761::int8 % 1000003)::int4, md5((g * 17)::text), g
  FROM generate_series(1, 3000) g;
SELECT brin_summarize_new_values('brin_mm_idx');
-- inserts into summarized ranges: minmax-multi summaries grow (UPDATE moves them when the page is full)
INSERT INTO brin_mm SELECT g, (g * 40503)::int4 % 999983, md5(g::text) || md5((g + 5)::text), -g
  FROM generate_series(3001, 3600) g;
UPDATE brin_mm SET v = v + 7, t = t || md5(id::text) WHERE id % 50 = 0;
SELECT brin_desummarize_range('brin_mm_idx', 0);
SELECT brin_desummarize_range('brin_mm_idx', 4);
SELECT brin_summarize_range('brin_mm_idx', 4);
SELECT brin_summarize_new_values('brin_mm_idx');
VACUUM brin_mm;
