-- Room in each page of the usage minutes (issue 18; BENCHMARKS.md, "The
-- block ahead"). Each flush (every 5 s by default) adds to the row of each
-- key's current minute, so a row is updated up to twelve times a minute.
-- With full pages every update moved the row to another page and wrote two
-- index entries; with room, it stays on its page (a HOT update) and the
-- dead versions are pruned in place. Measured with psql, 10,000 keys, twelve
-- flushes of one minute: 49 to 103 ms a flush and 9.8 MB at 100, 37 to 59 ms
-- and 4.4 MB at 80. Minutes that are over keep the room: at most 1.25 times
-- the space of full pages.
ALTER TABLE usage_minutes SET (fillfactor = 80);
