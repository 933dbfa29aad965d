-- Sequences (rmgr 15, Sequence/LOG): several caches and increments, setval (is_called true and false),
-- ALTER SEQUENCE … RESTART and … START WITH (a rewrite that keeps log_cnt), serial and identity columns,
-- TRUNCATE … RESTART IDENTITY, nextval past log boundaries (SEQ_LOG_VALS = 32) and past a CHECKPOINT,
-- nextval in an aborted transaction, an ascending sequence that reaches its MAXVALUE, a descending one.
--
-- Every sequence lives in its own value range (seq_a 1e6.., seq_b 2e6.., …; see tests/test_sequence.py's
-- SEQUENCES), so that the test can tell the sequences apart from a page's last_value alone.
CREATE SEQUENCE seq_a MINVALUE 1000000 MAXVALUE 1999999;                      -- cache 1, +1
CREATE SEQUENCE seq_b MINVALUE 2000000 MAXVALUE 2999999 CACHE 20 INCREMENT 3;
CREATE SEQUENCE seq_c MINVALUE 3000000 MAXVALUE 3999999 CACHE 50 INCREMENT 7;  -- cache > SEQ_LOG_VALS
CREATE SEQUENCE seq_d MINVALUE -4999999 MAXVALUE -4000000 INCREMENT -2 CACHE 5; -- descending
CREATE SEQUENCE seq_e MINVALUE 5000000 MAXVALUE 5999999;
CREATE SEQUENCE seq_f MINVALUE 6000000 MAXVALUE 6999999;
CREATE SEQUENCE seq_g MINVALUE 9000000 MAXVALUE 9000040;                      -- runs into its MAXVALUE
CREATE TABLE seq_t (id serial PRIMARY KEY,
                    j bigint GENERATED ALWAYS AS IDENTITY (MINVALUE 8000000 MAXVALUE 8999999 CACHE 10),
                    v text);
ALTER SEQUENCE seq_t_id_seq MINVALUE 7000000 MAXVALUE 7999999 START WITH 7000000 RESTART;

SELECT count(nextval('seq_a')) FROM generate_series(1, 100);
SELECT count(nextval('seq_b')) FROM generate_series(1, 70);
SELECT count(nextval('seq_c')) FROM generate_series(1, 130);
SELECT count(nextval('seq_d')) FROM generate_series(1, 45);
SELECT count(nextval('seq_f')) FROM generate_series(1, 10);
SELECT count(nextval('seq_g')) FROM generate_series(1, 38);
INSERT INTO seq_t (v) SELECT 'r' || g FROM generate_series(1, 300) g;

SELECT setval('seq_a', 1005000);
SELECT nextval('seq_a');
SELECT setval('seq_e', 5000500, false);   -- logged with is_called = false; never used again
ALTER SEQUENCE seq_b RESTART WITH 2000007;
SELECT nextval('seq_b');
ALTER SEQUENCE seq_f START WITH 6000100;  -- new relfilenode, the tuple (log_cnt > 0) copied as it is
SELECT count(nextval('seq_f')) FROM generate_series(1, 5);
BEGIN;
SELECT count(nextval('seq_c')) FROM generate_series(1, 60);
ROLLBACK;

CHECKPOINT;
-- the first nextval after a checkpoint logs even with values left
SELECT count(nextval('seq_a')) FROM generate_series(1, 40);
SELECT nextval('seq_d');
SELECT nextval('seq_g');
INSERT INTO seq_t (v) SELECT 's' || g FROM generate_series(1, 20) g;
TRUNCATE seq_t RESTART IDENTITY;
INSERT INTO seq_t (v) SELECT 't' || g FROM generate_series(1, 45) g;
