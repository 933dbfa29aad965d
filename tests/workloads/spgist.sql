-- SP-GiST: every index is created on an empty table and filled by inserts (an index build is not
-- WAL-logged record by record), then deletes, VACUUM, and more inserts that reuse the freed space.
--
--   spgist_quad   quad-tree on points (quad_point_ops, the default): ADD_LEAF, PICKSPLIT, MOVE_LEAFS
--   spgist_kd     k-d tree on points (kd_point_ops)
--   spgist_text   radix tree on text with common prefixes: ADD_NODE, SPLIT_TUPLE
--   spgist_radix  long common prefixes and values longer than a page: ADD_NODE moving the tuple, SPLIT_TUPLE
--                 to another page, PICKSPLIT re-initializing its source
--   spgist_wide   children of the root with long prefixes: ADD_NODE with the parent on a third page
--   spgist_inet   inet_ops on IPv4 and IPv6 addresses
--   spgist_crowd  many identical / near-identical points: allTheSame PICKSPLIT, MOVE_LEAFS
--   spgist_nulls  NULL keys: the nulls tree (storesNulls pages)
--   spgist_tiny   a few rows, so the root stays a leaf: VACUUM_ROOT
-- Deletes + VACUUM give VACUUM_LEAF; a second VACUUM after another transaction, once the redirect
-- tuples' xids are older than every snapshot, gives VACUUM_REDIRECT.

CREATE TABLE spgist_quad (id int, p point);
CREATE INDEX spgist_quad_idx ON spgist_quad USING spgist (p);
INSERT INTO spgist_quad SELECT g, point((g * 7919) % 1000, (g * 104729) % 997) FROM generate_series(1, 1500) g;

CREATE TABLE spgist_kd (id int, p point);
CREATE INDEX spgist_kd_idx ON spgist_kd USING spgist (p kd_point_ops);
INSERT INTO spgist_kd SELECT g, point((g * 4793) % 1009, (g * 2969) % 1013) FROM generate_series(1, 1500) g;

CREATE TABLE spgist_text (id int, t text);
CREATE INDEX spgist_text_idx ON spgist_text USING spgist (t);
INSERT INTO spgist_text SELECT g, 'http://www.example.com/path/' || (g % 40) || '/' || md5(g::text)
  FROM generate_series(1, 1000) g;
-- new values that leave the common prefix: the inner tuples' prefixes split, new labels are added
INSERT INTO spgist_text SELECT g, 'http://www.example.org/' || md5(g::text) FROM generate_series(1, 300) g;
INSERT INTO spgist_text SELECT g, 'ftp://' || (g % 7) || '/' || g FROM generate_series(1, 300) g;
INSERT INTO spgist_text SELECT g, chr(65 + g % 50) || repeat('x', g % 5) || g FROM generate_series(1, 400) g;
INSERT INTO spgist_text SELECT g, 'http://www.example.com/path/' || (g % 40) || 'z' || g FROM generate_series(1, 300) g;

-- long common prefixes (~900 bytes per group): a few inner tuples fill an inner page, so adding a
-- label moves the inner tuple to another page (ADD_NODE with a new place, maybe a new page), and a value
-- leaving a prefix half-way splits it with the postfix tuple on another page (SPLIT_TUPLE)
CREATE TABLE spgist_radix (id int, t text);
CREATE INDEX spgist_radix_idx ON spgist_radix USING spgist (t);
INSERT INTO spgist_radix SELECT g, repeat(md5((g % 24)::text), 28) || chr(97 + g / 24 % 3) || g
  FROM generate_series(1, 720) g;
INSERT INTO spgist_radix SELECT g, repeat(md5((g % 24)::text), 28) || chr(100 + g / 24 % 20) || g
  FROM generate_series(1, 960) g;
INSERT INTO spgist_radix SELECT g, substr(repeat(md5((g % 24)::text), 28), 1, 300 + g % 200) || '!' || g
  FROM generate_series(1, 240) g;

-- values longer than a page: no new leaf page can take one, so the split re-initializes that page
-- (PICKSPLIT with initSrc) and the value is cut into prefixes
INSERT INTO spgist_radix SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 6) g;
INSERT INTO spgist_radix SELECT g, 'q' || repeat(md5(g::text), 300) FROM generate_series(1, 3) g;

-- 12 groups, each with its own first byte and a 1200-byte common run: the root's children (never on the
-- root page, which holds one inner tuple) carry long prefixes, and new labels grow them until they move
-- to another page while their parent stays on the root (ADD_NODE with the parent as block 2)
CREATE TABLE spgist_wide (id int, t text);
CREATE INDEX spgist_wide_idx ON spgist_wide USING spgist (t);
INSERT INTO spgist_wide SELECT g, chr(65 + g % 12) || repeat('x', 1200) || chr(97 + g / 12 % 2) || g
  FROM generate_series(1, 240) g;
INSERT INTO spgist_wide SELECT g, chr(65 + g % 12) || repeat('x', 1200) || chr(99 + g / 12 % 24) || g
  FROM generate_series(1, 720) g;

CREATE TABLE spgist_inet (id int, a inet);
CREATE INDEX spgist_inet_idx ON spgist_inet USING spgist (a);
INSERT INTO spgist_inet SELECT g, ('10.' || (g % 256) || '.' || (g / 256 % 256) || '.' || (g * 7 % 256)
  || '/' || (16 + g % 17))::inet FROM generate_series(1, 1000) g;
INSERT INTO spgist_inet SELECT g, ('2001:db8:' || to_hex(g % 4096) || '::' || to_hex(g) || '/' || (48 + g % 81))::inet
  FROM generate_series(1, 500) g;

CREATE TABLE spgist_crowd (id int, p point);
CREATE INDEX spgist_crowd_idx ON spgist_crowd USING spgist (p);
INSERT INTO spgist_crowd SELECT g, point(1, 1) FROM generate_series(1, 1000) g;
INSERT INTO spgist_crowd SELECT g, point(1 + (g % 3) * 1e-9, 1) FROM generate_series(1, 600) g;
INSERT INTO spgist_crowd SELECT g, point(5, 5) FROM generate_series(1, 400) g;

CREATE TABLE spgist_nulls (id int, p point);
CREATE INDEX spgist_nulls_idx ON spgist_nulls USING spgist (p);
INSERT INTO spgist_nulls SELECT g, CASE WHEN g % 3 = 0 THEN point(g % 50, g % 70) END FROM generate_series(1, 1500) g;

CREATE TABLE spgist_tiny (id int, p point);
CREATE INDEX spgist_tiny_idx ON spgist_tiny USING spgist (p);
INSERT INTO spgist_tiny SELECT g, point(g, g) FROM generate_series(1, 30) g;

-- deletes, then VACUUM: VACUUM_LEAF on leaf pages, VACUUM_ROOT on the tiny index's leaf root
DELETE FROM spgist_quad WHERE id % 3 = 0;
DELETE FROM spgist_kd WHERE id % 4 = 1;
DELETE FROM spgist_text WHERE id % 2 = 0;
DELETE FROM spgist_radix WHERE id % 3 = 0;
DELETE FROM spgist_wide WHERE id % 4 = 0;
DELETE FROM spgist_inet WHERE id % 5 < 2;
DELETE FROM spgist_crowd WHERE id % 2 = 1;
DELETE FROM spgist_nulls WHERE id % 4 = 0;
DELETE FROM spgist_tiny WHERE id % 2 = 0;
VACUUM spgist_quad, spgist_kd, spgist_text, spgist_radix, spgist_wide, spgist_inet, spgist_crowd, spgist_nulls,
  spgist_tiny;

-- another transaction, so the redirects' xids fall behind every snapshot; the second VACUUM turns
-- them into placeholders and trims trailing placeholders (VACUUM_REDIRECT)
SELECT txid_current();
VACUUM spgist_quad, spgist_kd, spgist_text, spgist_radix, spgist_wide, spgist_inet, spgist_crowd, spgist_nulls,
  spgist_tiny;

-- more inserts reuse placeholders and replace DEAD tuples
INSERT INTO spgist_quad SELECT g, point((g * 31) % 1000, (g * 17) % 997) FROM generate_series(1, 500) g;
INSERT INTO spgist_kd SELECT g, point((g * 13) % 1009, (g * 29) % 1013) FROM generate_series(1, 500) g;
INSERT INTO spgist_text SELECT g, 'http://www.example.com/path/' || (g % 40) || '/' || md5((g + 7)::text)
  FROM generate_series(1, 500) g;
INSERT INTO spgist_inet SELECT g, ('10.' || (g % 256) || '.9.' || (g % 200) || '/24')::inet
  FROM generate_series(1, 500) g;
INSERT INTO spgist_crowd SELECT g, point(1, 1) FROM generate_series(1, 500) g;
INSERT INTO spgist_nulls SELECT g, NULL FROM generate_series(1, 500) g;
INSERT INTO spgist_tiny SELECT g, point(-g, g) FROM generate_series(1, 5) g;

DELETE FROM spgist_quad WHERE id % 5 = 0;
DELETE FROM spgist_text WHERE id % 3 = 0;
DELETE FROM spgist_tiny;
VACUUM spgist_quad, spgist_text, spgist_tiny;
SELECT txid_current();
VACUUM spgist_quad, spgist_kd, spgist_text, spgist_radix, spgist_wide, spgist_inet, spgist_crowd, spgist_nulls,
  spgist_tiny;
