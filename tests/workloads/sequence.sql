-- Sequences: several caches, setval, restart, serial and identity columns (Sequence/LOG records)
CREATE SEQUENCE seq_a;
CREATE SEQUENCE seq_b CACHE 20 INCREMENT 3;
CREATE TABLE seq_t (id serial PRIMARY KEY, j bigint GENERATED ALWAYS AS IDENTITY, v text);
SELECT count(nextval('seq_a')) FROM generate_series(1, 100);
SELECT count(nextval('seq_b')) FROM generate_series(1, 70);
INSERT INTO seq_t (v) SELECT 'r' || g FROM generate_series(1, 300) g;
SELECT setval('seq_a', 5000);
SELECT nextval('seq_a');
ALTER SEQUENCE seq_b RESTART WITH 7;
SELECT nextval('seq_b');
CHECKPOINT;
SELECT count(nextval('seq_a')) FROM generate_series(1, 40);
