-- Room in each page for a key's next row version (issue 18; BENCHMARKS.md,
-- "The block ahead"). The usage flush writes a key's last use once a minute;
-- with full pages every such update writes a new entry into each of the
-- table's indexes, and a flush of 10,000 keys cost PostgreSQL 140 to 170 ms.
-- With room on the page the update stays on it (a HOT update: no index
-- changes, since the last-use columns are in no index): 60 to 113 ms at 70,
-- falling as pages settle. New pages get the room at once; existing pages as
-- they are rewritten. The price: the table takes about 1.4 times the space.
ALTER TABLE api_keys SET (fillfactor = 70);
