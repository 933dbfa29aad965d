-- GiST (Gist records): indexes on points, boxes, ranges and btree_gist keys, built on empty tables and
-- filled by inserts (PAGE_SPLIT: root splits, splits on several levels; PAGE_UPDATE: inserts, downlink
-- updates clearing F_FOLLOW_RIGHT on the left child); scans that kill deleted items (LP_DEAD) followed by
-- inserts into the full leaves (DELETE); VACUUM removing items (PAGE_UPDATE deletions) and empty leaves
-- (PAGE_DELETE); more work and another VACUUM so the deleted pages are recycled by splits (PAGE_REUSE).
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- points on a grid, inserted row by row of the grid
CREATE TABLE gist_pt (id int, p point);
CREATE INDEX gist_pt_idx ON gist_pt USING gist (p);
INSERT INTO gist_pt SELECT g, point(g % 60, g / 60) FROM generate_series(0, 3599) g;

-- kill a third of the items everywhere: plain index scans over the whole grid after the delete
DELETE FROM gist_pt WHERE id % 3 = 0;
SET enable_bitmapscan = off;
SET enable_seqscan = off;
SET enable_indexonlyscan = off;
SELECT sum(id) FROM gist_pt WHERE p <@ box '((0,0),(60,60))';
SELECT sum(id) FROM gist_pt WHERE p <@ box '((0,0),(60,60))';
-- fill the leaves again: a full leaf with killed items deletes them first (DELETE) instead of splitting
INSERT INTO gist_pt SELECT 10000 + g, point(g % 60 + 0.5, g / 60 + 0.5) FROM generate_series(0, 2399) g;
RESET enable_bitmapscan;
RESET enable_seqscan;
RESET enable_indexonlyscan;

-- empty a whole region: VACUUM deletes the items (PAGE_UPDATE) and then the empty leaves (PAGE_DELETE)
DELETE FROM gist_pt WHERE p[1] < 25;
VACUUM gist_pt;
-- new transactions, then VACUUM again: the deleted pages are old enough to go to the free space map
INSERT INTO gist_pt VALUES (-1, point(59, 59));
INSERT INTO gist_pt VALUES (-2, point(58, 59));
VACUUM gist_pt;
-- splits take the recycled pages (PAGE_REUSE, then PAGE_SPLIT onto the reused blocks)
INSERT INTO gist_pt SELECT 20000 + g, point(g % 60 + 0.25, 30 + (g / 60) % 30 + 0.25)
  FROM generate_series(0, 2999) g;

-- boxes, with a delete and VACUUM
CREATE TABLE gist_box (id int, b box);
CREATE INDEX gist_box_idx ON gist_box USING gist (b);
INSERT INTO gist_box
  SELECT g, box(point(g % 70, g / 70), point(g % 70 + (g % 7), g / 70 + (g % 5))) FROM generate_series(1, 3000) g;
DELETE FROM gist_box WHERE id % 4 = 1;
VACUUM gist_box;

-- ranges: int4range, and tsrange in an exclusion constraint with a btree_gist int column
CREATE TABLE gist_range (id int, r int4range);
CREATE INDEX gist_range_idx ON gist_range USING gist (r);
INSERT INTO gist_range SELECT g, int4range(g * 3 % 5000, g * 3 % 5000 + g % 40) FROM generate_series(1, 2500) g;
CREATE TABLE gist_booking (room int, during tsrange, EXCLUDE USING gist (room WITH =, during WITH &&));
INSERT INTO gist_booking
  SELECT g % 20, tsrange(timestamp '2024-01-01' + (g / 20) * interval '1 hour',
                         timestamp '2024-01-01' + (g / 20) * interval '1 hour' + interval '50 minutes')
  FROM generate_series(0, 2499) g;

-- btree_gist on wide text keys: few items per page, so the tree grows several levels
CREATE TABLE gist_text (id int, t text);
CREATE INDEX gist_text_idx ON gist_text USING gist (t);
INSERT INTO gist_text
  SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 17)::text)
            || md5((g * 19)::text) || md5((g * 23)::text)
  FROM generate_series(1, 2500) g;
DELETE FROM gist_text WHERE id % 5 = 0;
VACUUM gist_text;

-- indexes built on filled tables by the buffering build: their pages reach WAL as full-page images
-- (log_newpage_range), then inserts split the leaves. Not the sorted build (the default for points):
-- it writes its pages with LSN 0/1 before logging them, so the disk never has the LSN a replay gives.
CREATE TABLE gist_built (id int, p point, b box);
INSERT INTO gist_built SELECT g, point(g % 50, g / 50), box(point(g % 50, g / 50), point(g % 50 + 1, g / 50 + 1))
  FROM generate_series(1, 3000) g;
CREATE INDEX gist_built_p ON gist_built USING gist (p) WITH (buffering = on);
CREATE INDEX gist_built_b ON gist_built USING gist (b) WITH (buffering = on);
INSERT INTO gist_built SELECT 5000 + g, point(g % 50 + 0.5, g / 50 + 0.5), box(point(g % 50, 0), point(g % 50 + 2, 2))
  FROM generate_series(1, 600) g;
